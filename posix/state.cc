// posix/state.cc: State's submission and completion paths (see state.h): accepting an aiocb,
// claiming, filling and launching its slot (on the calling thread or through the submitter),
// Deliver, the continuation of a short result, notification, the scans aio_fsync needs, and the
// counters. aio_cancel's side is posix/cancel.cc.
#include "posix/state.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "core/slot.h"
#include "posix/aiocb_words.h"
#include "posix/orderer.h"
#include "posix/waiting.h"
#include "runtime/service_access.h"

namespace kaio::posix {

std::atomic<State*> g_state{nullptr};

namespace {

// One producer token per thread for the engine's queue, created on the thread's first submission
// and deleted by a TLS destructor (ThreadTokenReaper). The thread may still submit after that: an
// atexit handler, a static destructor, or a thread_local destroyed later than the reaper. `retired`
// then sends its requests through State's shared token, never through the freed one. The struct
// itself is trivially destructible, so it stays valid for the whole life of the thread.
struct ThreadToken {
  const State* owner;
  runtime::Engine::ProducerToken* token;
  bool retired;
};
thread_local ThreadToken t_token = {nullptr, nullptr, false};

struct ThreadTokenReaper {
  bool armed = false;
  ~ThreadTokenReaper() {
    // A token of a state left behind by fork() belongs to the parent's queue: leave it. (acquire:
    // as every reader of g_state; here the pointer is only compared.)
    if (t_token.token != nullptr && t_token.owner == g_state.load(std::memory_order_acquire)) delete t_token.token;
    t_token.token = nullptr;
    t_token.retired = true;
  }
};
// Its destructor is registered on the thread's first use, i.e. when the token is created.
thread_local ThreadTokenReaper t_token_reaper;

}  // namespace

runtime::Engine::ProducerToken* State::Token() {
  if (t_token.retired) return nullptr;
  if (t_token.owner != this) {
    t_token_reaper.armed = true;
    t_token.token = engine_.NewProducerToken().release();  // a previous owner's token is abandoned
    t_token.owner = this;
  }
  return t_token.token;
}

State::State(std::unique_ptr<Service> service, const PosixOptions& options)
    : options_(options),
      service_(std::move(service)),
      engine_(runtime::ServiceAccess::EngineOf(*service_)),
      pid_(getpid()),
      uid_(getuid()),
      sink_(*this),
      orderer_(std::make_unique<Orderer>(*this)) {
  engine_.RegisterSink(&sink_);
}

int State::SubmitAiocb(struct aiocb* cb, Op op, LioGroup* group, SubmitRoute route, bool* flush) {
  int error = 0;
  Request req;
  // aio_fsync reads only aio_fildes and aio_sigevent (as glibc's, which ignores aio_reqprio there).
  if (!IsSync(op) && (cb->aio_reqprio < 0 || cb->aio_reqprio > AIO_PRIO_DELTA_MAX)) {
    error = EINVAL;
  } else if (!ParseSigevent(cb->aio_sigevent, &req.notification)) {
    error = EINVAL;
  } else if (!engine_.accepting()) {
    error = EAGAIN;
  }
  if (error != 0) {
    MarkFailed(cb, error);
    return error;
  }
  req.cb = cb;
  req.op = op;
  req.fd = cb->aio_fildes;
  req.buf = static_cast<char*>(const_cast<void*>(cb->aio_buf));
  req.nbytes = cb->aio_nbytes;
  req.offset = cb->aio_offset;
  req.group = group;
  bool ordered = IsSync(op);
  if (op == Op::kWrite) {
    // Writes to an O_APPEND fd must land in call order, which concurrent kernel or pool requests
    // would not guarantee. (An fd fcntl cannot read fails the write in the kernel, with EBADF.)
    int saved = errno;
    int flags = fcntl(req.fd, F_GETFL);
    errno = saved;
    ordered = flags >= 0 && (flags & O_APPEND) != 0;
    req.file_flags = flags;  // the engine looks at the fd too: it is spared this syscall
  }
  MarkInProgress(cb);
  // relaxed: the caller holds the group's own count until the whole list is queued.
  if (group != nullptr) group->pending.fetch_add(1, std::memory_order_relaxed);
  if (op == Op::kNone) {
    // A lio_listio entry whose aio_lio_opcode names no operation: accepted, and failed with EINVAL
    // as its asynchronous result, notification included (as glibc does). relaxed: a statistic.
    counters_.submitted.fetch_add(1, std::memory_order_relaxed);
    Finish(cb, -EINVAL, req.notification, group);
    return 0;
  }
  if (op == Op::kRead && options_.inline_submit) {
    // A page-cache hit is read here, on the calling thread, as a pread would (an fd kaio has seen
    // complete its reads inside io_submit; RWF_NOWAIT, so never a wait for the device): no hand-off
    // to the submitter and back. glibc's helper may finish a request before aio_read returns too.
    // The aiocb is not touched after Finish: a signal handler may reuse it at once.
    const int64_t got = engine_.ReadOnCaller(req.fd, req.buf, req.nbytes, req.offset);
    if (got >= 0) {
      // relaxed: a statistic (Stats), through which nothing is published.
      counters_.submitted.fetch_add(1, std::memory_order_relaxed);
      Finish(cb, got, req.notification, group);
      return 0;
    }
  }
  // A slot or a thread the orderer could not get (EAGAIN) refuses the request here; a refusal
  // after it was held back is its asynchronous result.
  if (int err = ordered ? orderer_->Submit(req) : SubmitNow(req, route, flush); err != 0) {
    // relaxed: as the add above; never the last count.
    if (group != nullptr) group->pending.fetch_sub(1, std::memory_order_relaxed);
    MarkFailed(cb, err);
    return err;
  }
  // relaxed: statistics (Stats), through which nothing is published.
  if (ordered) counters_.ordered.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
  counters_.submitted.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

int State::SubmitNow(const Request& req, SubmitRoute route, bool* flush) {
  uint32_t index = Prepare(req);
  if (index == kNoSlot) return EAGAIN;
  // A lone request is submitted here only while none of the process's other requests is still
  // running. Behind a device queue the hand-off's few microseconds are lost in the queueing, while
  // a one-request io_submit on the calling thread costs it a device notification (a VM exit on
  // virtio) that the submitter pays once per chunk, and holds up the burst that may follow
  // (docs/posix.md: O_DIRECT reads at iodepth 64 measured 0.92-0.94x of hand-off-only).
  // relaxed: a hint; a wrong answer only picks the other route, and both submit the request. It is
  // fresh where it matters: a program that saw its last result (acquiring Publish's store) sees
  // that request's `delivered` add, which Sink::Deliver makes before OnDeliver publishes.
  const bool go_inline =
      route == SubmitRoute::kList ||
      (route == SubmitRoute::kSingle && TakeLatencyBound() &&
       sink_.accepted.load(std::memory_order_relaxed) == sink_.delivered.load(std::memory_order_relaxed));
  runtime::Engine::ProducerToken* token = Token();
  if (!options_.inline_submit || !go_inline || token == nullptr) {
    Launch(index);
    return 0;
  }
  // The calling thread calls io_submit itself while the submitter sleeps (RWF_NOWAIT: it cannot
  // block there; what the kernel refuses goes to the pool): one thread hand-off fewer, none for a
  // page-cache hit, whose result is published before aio_read returns. POSIX wants the request to
  // progress with no further call from the program, so it is flushed now (a list: after its last
  // entry), never left for a later aio_suspend. An awake submitter takes it as usual.
  // seq_cst, as in Launch (see there).
  sink_.accepted.fetch_add(1, std::memory_order_seq_cst);  // before the enqueue, as in Launch
  if (engine_.EnqueueDeferred(*token, index)) {
    if (route == SubmitRoute::kList) {
      *flush = true;
    } else {
      FlushInline();
    }
  }
  return 0;
}

uint32_t State::Prepare(const Request& req, uint32_t* generation_out) {
  uint32_t index = engine_.Claim(sink_, reinterpret_cast<uintptr_t>(req.cb));
  if (index == kNoSlot) return kNoSlot;
  // The engine describes the request in its own terms; offsets and lengths are the aiocb's as they
  // are (aio_fsync reads neither).
  const uint32_t generation =
      engine_.Describe(index, req.fd, IoOpcode(req.op), IsSync(req.op) ? nullptr : req.buf,
                       IsSync(req.op) ? 0 : req.nbytes, IsSync(req.op) ? 0 : req.offset, /*serial=*/0,
                       req.file_flags);
  // The slot exists (it was just claimed), so its record does.
  Record rec(*engine_.ClientRecordOf(index));
  rec.SetTarget(req.fd, req.op, req.cb);
  // Published to the request's completer by the slot's release hand-off (Launch).
  rec.SetPlain(RecordPlain{req.notification, req.group});
  // release: a scanner or canceller that acquires the state sees the fields above.
  rec.state().store(uint64_t{generation} << kStateShift, std::memory_order_release);
  StoreTicket(req.cb, core::PackTicket(generation, index));
  if (generation_out != nullptr) *generation_out = generation;
  return index;
}

void State::Launch(uint32_t index) {
  // Many threads submit through this sink: a read-modify-write. Counted before the enqueue, as the
  // engine requires. The POSIX service is never shut down, so the refuse-after-counting handshake
  // Requester::Submit does with Engine::accepting() is not needed here.
  // seq_cst: the order every producer's count has (engine.h, accepting() vs Shutdown), kept though
  // that handshake is not run here. What this sink needs is only that the count comes before the
  // enqueue (a release), so every `delivered` add follows its request's `accepted` add.
  sink_.accepted.fetch_add(1, std::memory_order_seq_cst);
  if (runtime::Engine::ProducerToken* token = Token()) {
    engine_.Enqueue(*token, index);
  } else {
    std::lock_guard<std::mutex> lock(retired_mu_);
    if (retired_token_ == nullptr) retired_token_ = engine_.NewProducerToken();
    engine_.Enqueue(*retired_token_, index);
  }
}

void State::OnDeliver(uint32_t index) {
  const runtime::Engine::Delivered delivered = engine_.TakeDelivered(index);
  Record rec(*engine_.ClientRecordOf(index));
  // acq_rel: acquire, so a canceller that won (kCancelWon, and kCancelDone once it is finished) is
  // seen with all it did to the record and the aiocb before this thread frees the slot; release, so
  // a canceller that finds kDelivered in its fetch_or of kCancelDone frees the slot only after this
  // thread's reads of it above.
  uint64_t prev = rec.state().fetch_or(kDelivered, std::memory_order_acq_rel);
  if (prev & kCancelWon) {
    // aio_cancel published ECANCELED; the slot is freed by whichever of us finishes last.
    if (prev & kCancelDone) engine_.FreeDelivered(index, delivered.generation);
    return;
  }
  // The engine's result is the whole answer: a short RWF_NOWAIT read or write it finished in its
  // pool (Slot::partial), so what is short here is short for a blocking call too (end of file,
  // a full disk), as glibc's one pread or pwrite per request.
  int64_t final_result = delivered.result;
  // Stored by Prepare before the slot's release hand-off, which the engine acquired before Deliver.
  struct aiocb* cb = rec.cb();
  RecordPlain plain = rec.plain();
  ClaimNotifyThread(&plain.notification, &final_result);
  if (plain.notification.signal_fails) final_result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
  Publish(cb, final_result);  // from here on the aiocb is the program's again
  // kFinal, acq_rel for its release half: Publish came first, so a thread that acquires kFinal
  // (State::Done for the orderer, the scans, a canceller's WaitSettled) finds the result in the
  // aiocb and the request's work done; the acquire half orders nothing here.
  rec.state().fetch_or(kFinal, std::memory_order_acq_rel);
  engine_.FreeDelivered(index, delivered.generation);
  AfterCompletion(plain.notification, plain.group);
}

void State::Finish(struct aiocb* cb, int64_t result, const Notification& notification, LioGroup* group) {
  Notification n = notification;
  ClaimNotifyThread(&n, &result);
  if (n.signal_fails) result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
  Publish(cb, result);
  AfterCompletion(n, group);
}

// Before a result is published: a SIGEV_THREAD callback needs a thread, claimed while the result
// can still say that none could be started (EAGAIN; the callback does not run). glibc's code means
// to do the same, but it tests pthread_create's result for < 0, so there the callback is silently
// lost and the request keeps its result.
void State::ClaimNotifyThread(Notification* n, int64_t* result) {
  if (n->notify != SIGEV_THREAD || notifier_.Reserve(n)) return;
  *result = -EAGAIN;
  n->notify = SIGEV_NONE;
}

void State::AfterCompletion(const Notification& n, LioGroup* group) {
  WakeWaiters();
  Notify(n);
  if (group != nullptr) ReleaseGroup(group);
}

void State::ReleaseGroup(LioGroup* group) {
  // acq_rel: a reference count. Release, so each holder's use of the group comes before the delete;
  // acquire, so the last one, which reads `notification` and deletes the group, sees all of them.
  if (group->pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  Notification list = group->notification;
  delete group;
  // No aiocb can tell that the list's callback could not run (glibc drops it too).
  if (list.notify == SIGEV_THREAD && !notifier_.Reserve(&list)) return;
  Notify(list);
}

void State::Notify(const Notification& n) {
  switch (n.notify) {
    case SIGEV_SIGNAL:
    case SIGEV_THREAD_ID:
      SendSignal(n);
      break;
    case SIGEV_THREAD:
      // relaxed: a statistic.
      counters_.threads.fetch_add(1, std::memory_order_relaxed);
      notifier_.Post(n);
      break;
    default:
      break;
  }
}

void State::SendSignal(const Notification& n) {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  info.si_signo = n.signo;
  info.si_code = SI_ASYNCIO;
  info.si_pid = pid_;
  info.si_uid = uid_;
  info.si_value = n.value;
  int saved = errno;
  if (n.notify == SIGEV_THREAD_ID) {
    syscall(SYS_rt_tgsigqueueinfo, pid_, n.tid, n.signo, &info);
  } else {
    syscall(SYS_rt_sigqueueinfo, pid_, n.signo, &info);
  }
  errno = saved;
  // relaxed: a statistic.
  counters_.signals.fetch_add(1, std::memory_order_relaxed);
}

std::vector<Dep> State::ScanWrites(int fd) const {
  std::vector<Dep> deps;
  const uint32_t count = engine_.slot_count();
  for (uint32_t index = 0; index < count; ++index) {
    const Record rec(*engine_.ClientRecordOf(index));
    // acquire: pairs with Prepare's release store of `state`, so op and fd (relaxed, below) are
    // this generation's or a later one's; a later one's means this generation is done, and then the
    // dep (or its absence) is right either way.
    uint64_t state = rec.state().load(std::memory_order_acquire);
    if (state == 0 || (state & kFinal)) continue;
    if (rec.op() != Op::kWrite || rec.fd() != fd) continue;
    // If the slot was reused since `state` was read, the dep is simply already done.
    deps.push_back(Dep{index, static_cast<uint32_t>(state >> kStateShift)});
  }
  return deps;
}

bool State::Done(const Dep& dep) const {
  core::ClientRecord* client = engine_.ClientRecordOf(dep.index);
  if (client == nullptr) return true;
  // acquire: pairs with the release of kFinal (after Publish and the request's work), or of a later
  // generation's Prepare (after this one's slot was freed), so what the orderer releases after this
  // returns true comes after the request. The orderer's thread loads it after announcing itself on
  // the completion word, and a completer sets kFinal before WakeWaiters' add: see WakeWaiters for
  // why an acquire here is enough.
  uint64_t state = Record(*client).state().load(std::memory_order_acquire);
  return static_cast<uint32_t>(state >> kStateShift) != dep.generation || (state & kFinal) != 0;
}

PosixStats State::Stats() const {
  PosixStats s;
  s.started = true;
  // relaxed: statistics; each counter is exact on its own, the set is no snapshot.
  s.submitted = counters_.submitted.load(std::memory_order_relaxed);
  s.ordered = counters_.ordered.load(std::memory_order_relaxed);
  s.cancelled = counters_.cancelled.load(std::memory_order_relaxed);
  s.signals_sent = counters_.signals.load(std::memory_order_relaxed);
  s.threads_notified = counters_.threads.load(std::memory_order_relaxed);
  s.service = service_->Stats();
  return s;
}

}  // namespace kaio::posix
