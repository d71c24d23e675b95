#include "runtime/engine.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/planted_bug.h"
#include "runtime/stream_lanes.h"

namespace kaio::runtime {

std::atomic<uint64_t> QueueTraits::allocations{0};

namespace {

using core::SlotState;
using core::WordGeneration;
using core::WordState;

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// kaio's wake-up and completion eventfds: non-blocking, as every wait on them is a bounded poll.
int MakeEventfd() { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

// Reads the whole text of a small /proc file, or "?" when it cannot.
std::string ReadProcValue(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return "?";
  char buf[64] = {0};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  return buf;
}

// Kernel errors, classified in one place.
enum class SubmitErrorClass {
  kRetryLater,     // EAGAIN: the kernel's queue is full
  kInterrupted,    // EINTR: just try again
  kUnsupported,    // the fd cannot take RWF_NOWAIT or kernel AIO: run it in the pool
  kFailRequest,    // EBADF, EINVAL, EFBIG...: this request fails, the batch goes on
};

SubmitErrorClass ClassifySubmitError(int negative_errno, bool nowait) {
  switch (-negative_errno) {
    case EAGAIN:
      return SubmitErrorClass::kRetryLater;
    case EINTR:
      return SubmitErrorClass::kInterrupted;
    case EOPNOTSUPP:
      return nowait ? SubmitErrorClass::kUnsupported : SubmitErrorClass::kFailRequest;
    default:
      return SubmitErrorClass::kFailRequest;
  }
}

// A read or write that finds nothing else of its fd in flight skips the look at the fd (statx:
// 0.5 us here, where a 4 KiB page-cache pread is 0.7 us: page-cache reads at iodepth 1 measured
// 0.7x with the look), and MoveToLane takes it to its lane if the kernel says it would block.
// Off, every read and write on an fd with nothing of it in flight is looked at.
constexpr bool kLoneRequestsSkipTheLook = true;

bool IsReadOrWrite(short opcode) {
  return opcode == IO_CMD_PREAD || opcode == IO_CMD_PWRITE || opcode == IO_CMD_PREADV ||
         opcode == IO_CMD_PWRITEV;
}

// IOCB_FLAG_RESFD of <linux/aio_abi.h> (which clashes with <libaio.h>): libaio's io_set_eventfd sets it.
constexpr unsigned kIocbFlagResfd = 1u << 0;

bool IsVectored(short opcode) { return opcode == IO_CMD_PREADV || opcode == IO_CMD_PWRITEV; }

absl::Status NameAndPin(std::thread& thread, const std::string& name, int cpu) {
  std::string short_name = name.substr(0, 15);  // the kernel keeps 15 characters
  pthread_setname_np(thread.native_handle(), short_name.c_str());
  if (cpu < 0) return absl::OkStatus();
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(thread.native_handle(), sizeof(set), &set);
  if (rc != 0) return absl::ErrnoToStatus(rc, absl::StrCat("kaio: pinning thread ", name, " to CPU ", cpu));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ServiceOptions& options,
                                                       core::Syscalls* syscalls) {
  if (options.queue_depth < 1) {
    return absl::InvalidArgumentError(absl::StrCat("kaio: queue_depth must be at least 1, got ", options.queue_depth));
  }
  if (options.submit_batch < 1 || options.reap_batch < 1 || options.device_submit_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kaio: submit_batch, reap_batch and device_submit_chunk must be at least 1, got ", options.submit_batch, ", ",
        options.reap_batch, " and ", options.device_submit_chunk));
  }
  if (options.max_requests < 1) {
    return absl::InvalidArgumentError("kaio: max_requests must be at least 1");
  }
  if (options.fallback_threads < 0) {
    return absl::InvalidArgumentError("kaio: fallback_threads must not be negative");
  }
  if (options.idle_release < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("kaio: idle_release must not be negative");
  }
  int submit_efd = core::MoveOutOfTheWay(MakeEventfd());
  if (submit_efd < 0) return absl::ErrnoToStatus(errno, "kaio: eventfd for the submitter");
  int kernel_efd = core::MoveOutOfTheWay(MakeEventfd());
  if (kernel_efd < 0) {
    int err = errno;
    close(submit_efd);
    return absl::ErrnoToStatus(err, "kaio: eventfd for completions");
  }
  core::Syscalls& sys = syscalls != nullptr ? *syscalls : core::Syscalls::Real();
  std::unique_ptr<Engine> engine(new Engine(options, sys, submit_efd, kernel_efd));
  // kaio's threads never take the application's signals (glibc's AIO helpers do the same). They
  // inherit the creating thread's mask, and the pool's workers inherit theirs: block everything
  // around their creation, or a SIGINT the application reads from a signalfd can land on a kaio
  // thread and kill the process with the default action.
  sigset_t all_signals, caller_mask;
  sigfillset(&all_signals);
  pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
  try {
    engine->submitter_ = std::thread([e = engine.get()] { e->SubmitterLoop(); });
    engine->reaper_ = std::thread([e = engine.get()] { e->ReaperLoop(); });
  } catch (const std::system_error& e) {
    pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
    // The destructor stops and joins whichever of the two did start.
    return absl::ResourceExhaustedError(absl::StrCat("kaio: cannot start the service's threads: ", e.what()));
  }
  pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
  absl::Status pinned = NameAndPin(engine->submitter_, options.submitter_thread_name, options.submitter_cpu);
  if (pinned.ok()) pinned = NameAndPin(engine->reaper_, options.reaper_thread_name, options.reaper_cpu);
  if (!pinned.ok()) return pinned;  // the destructor stops the threads
  return engine;
}

Engine::Engine(const ServiceOptions& options, core::Syscalls& sys, int submit_efd, int kernel_efd)
    : options_(options),
      sys_(sys),
      slots_(static_cast<uint32_t>(options.max_requests)),
      submit_efd_(submit_efd, MakeEventfd),
      kernel_efd_(kernel_efd, MakeEventfd),
      fd_kind_(new std::atomic<uint8_t>[kFdKinds]()),
      fd_order_(new FdOrderState[kFdKinds]()),
      reaper_token_(std::make_unique<ProducerToken>(queue_)),
      device_chunk_(static_cast<size_t>(std::clamp(options.device_submit_chunk, 1, options.submit_batch))),
      submit_iocbs_(static_cast<size_t>(options.submit_batch)),
      submit_meta_(static_cast<size_t>(options.submit_batch)),
      inline_batch_(static_cast<size_t>(options.submit_batch)),
      last_kernel_activity_(absl::Now()),
      reap_events_(static_cast<size_t>(options.reap_batch)),
      lanes_(std::make_unique<StreamLanes>(*this)) {
  learn_.reserve(static_cast<size_t>(options.submit_batch));  // filled per inline batch, never grown
}

Engine::~Engine() {
  Shutdown();
  exiting_.store(true, std::memory_order_seq_cst);
  WakeSubmitter();
  if (submitter_.joinable()) submitter_.join();
  // The reaper leaves once in_kernel_ is 0, and only the submitter still changes it: a request
  // io_submit refused (EBADF) is delivered first and uncounted after, so Shutdown() can return in
  // between. Woken before the submitter is gone, the reaper could see the stale count, go back to
  // its blocking read and never wake again (CI caught it: 2 runs in 30 hung here).
  sys_.EventFdWrite(kernel_efd_.get(), 1);
  if (reaper_.joinable()) reaper_.join();
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    pool_cv_.notify_all();
  }
  for (std::thread& t : pool_threads_) t.join();
  lanes_.reset();  // after the pool, which tells the lanes when it finishes one of theirs
  if (uintptr_t ctx = context_.load(std::memory_order_acquire); ctx != 0) {
    sys_.IoDestroy(reinterpret_cast<io_context_t>(ctx));
  }
}

// ---------------------------------------------------------------- producers

uint32_t Engine::Claim(core::CompletionSink& sink, uint64_t tag) {
  uint32_t index = slots_.Acquire();
  if (index == kNoSlot) return kNoSlot;
  core::Slot& slot = slots_.at(index);
  // We own the slot exclusively (Acquire took it off the free stack); relaxed is enough until the
  // release in Enqueue publishes it.
  uint64_t word = slot.word.load(std::memory_order_relaxed);
  slot.word.store(core::PackWord(WordGeneration(word), SlotState::kClaimed), std::memory_order_relaxed);
  std::memset(&slot.cb, 0, sizeof(slot.cb));
  slot.cb.data = reinterpret_cast<void*>(static_cast<uintptr_t>(index));
  io_set_eventfd(&slot.cb, kernel_efd_.get());
  slot.flags = 0;
  slot.partial = 0;
  slot.tag = tag;
  slot.result.store(0, std::memory_order_relaxed);
  slot.sink.store(&sink, std::memory_order_relaxed);
  slot.mailbox_next = 0;
  return index;
}

void Engine::Unclaim(uint32_t index) {
  slots_.Free(index, slots_.at(index).word.load(std::memory_order_relaxed));
}

bool Engine::QueueAndAnnounce(ProducerToken& token, uint32_t index, bool* submitter_sleeps) {
  core::Slot& slot = slots_.at(index);
  uint64_t word = slot.word.load(std::memory_order_relaxed);
  // release: the submitter (or a canceller) that acquires kQueued sees the filled iocb.
  slot.word.store(core::PackWord(WordGeneration(word), SlotState::kQueued), std::memory_order_release);
  if (!queue_.enqueue(token, index)) {
    // moodycamel fails only when it cannot allocate a block: complete the request with ENOMEM
    // rather than lose it.
    Complete(index, SlotState::kQueued, -ENOMEM);
    return false;
  }
  // seq_cst: the add is ordered after the enqueue for the submitter's CAS (see work_seq_).
  *submitter_sleeps = (work_seq_.fetch_add(2, std::memory_order_seq_cst) & 1) != 0;
  return true;
}

void Engine::Enqueue(ProducerToken& token, uint32_t index) {
  bool submitter_sleeps = false;
  if (QueueAndAnnounce(token, index, &submitter_sleeps) && submitter_sleeps) WakeSubmitterOnce();
}

void Engine::EnqueueToPool(uint32_t index) {
  core::Slot& slot = slots_.at(index);
  uint64_t word = slot.word.load(std::memory_order_relaxed);
  // A negative offset is the pool's pread's EINVAL; only the lanes would ignore it. No lone request
  // skips the look here: this runs outside the submit role, concurrently with other dispatches of
  // the fd, and what the pool runs it cannot take back to a lane.
  const StreamLanes::Order order = IsReadOrWrite(slot.cb.aio_lio_opcode) && slot.cb.u.c.offset >= 0
                                       ? DispatchOrder(slot, /*lone_may_go=*/false, nullptr)
                                       : StreamLanes::Order::kFree;
  if (order != StreamLanes::Order::kFree) slot.flags |= core::kSlotStream;
  // release: the worker, lane (or a canceller) that acquires kPoolQueued sees the filled iocb.
  slot.word.store(core::PackWord(WordGeneration(word), SlotState::kPoolQueued), std::memory_order_release);
  if (order == StreamLanes::Order::kFree) {
    PoolPush(index);
  } else {
    PushToLane(index, order);
  }
}

// ---------------------------------------------------------------- call order per fd

namespace {
bool IsWriteOp(short opcode) { return opcode == IO_CMD_PWRITE || opcode == IO_CMD_PWRITEV; }

}  // namespace

StreamLanes::Order Engine::DispatchOrder(core::Slot& slot, bool lone_may_go, KindCache* cache) {
  const int fd = slot.cb.aio_fildes;
  const short op = slot.cb.aio_lio_opcode;
  auto classify = [&] {
    if (cache != nullptr && cache->fd == fd && cache->kind != StreamLanes::Kind::kUnknown) return cache->kind;
    const StreamLanes::Kind kind = StreamLanes::Classify(fd);
    if (cache != nullptr) *cache = KindCache{fd, kind};
    return kind;
  };
  if (fd < 0 || fd >= kFdKinds) return StreamLanes::OrderFor(classify(), op);  // untracked: always look
  if (slot.flags & core::kSlotCounted) return StreamLanes::Order::kFree;  // back from the kernel: decided
  FdOrderState& state = fd_order_[fd];
  const int dir = IsWriteOp(op) ? 1 : 0;
  slot.flags |= core::kSlotCounted;
  // seq_cst: with Uncount's CAS, so the request that ends a busy period and the one that starts
  // the next agree on which is which (and on `kind` being forgotten in between).
  if (state.busy.fetch_add(1, std::memory_order_seq_cst) == 0 && lone_may_go) {
    // Nothing else of this fd in flight: no order to keep, so no look at the fd (a syscall the
    // page-cache hit at iodepth 1 cannot afford: 0.7x measured). Should it be a stream that would
    // block, the kernel says so (EAGAIN, a short write) and MoveToLane sends it to its lane then.
    // seq_cst: a lane's NothingOutside (store lane_waits, load outside) must see it.
    state.outside[dir].fetch_add(1, std::memory_order_seq_cst);
    slot.flags |= core::kSlotOutside;
    return StreamLanes::Order::kFree;
  }
  // Looked at once per batch, never remembered across batches: a cancelled request keeps its fd's
  // count until its holder completes it, while the program, told it is cancelled, may already have
  // closed the number and opened another kind of file on it (a directory's read then went to a
  // stream lane and answered 0, not EISDIR: the differential test, seed 16015467).
  const StreamLanes::Order order = StreamLanes::OrderFor(classify(), op);
  if (order == StreamLanes::Order::kFree) {
    state.outside[dir].fetch_add(1, std::memory_order_seq_cst);  // seq_cst: as above
    slot.flags |= core::kSlotOutside;
  }
  return order;
}

bool Engine::NothingOutside(int fd, bool write) {
  if (fd < 0 || fd >= kFdKinds) return true;
  FdOrderState& state = fd_order_[fd];
  std::atomic<uint32_t>& outside = state.outside[write ? 1 : 0];
  if (outside.load(std::memory_order_seq_cst) == 0) return true;
  // seq_cst, a Dekker pair with Uncount (decrement `outside`, then read lane_waits): either it sees
  // our flag and calls Ready, or we see its decrement here.
  state.lane_waits.store(true, std::memory_order_seq_cst);
  return outside.load(std::memory_order_seq_cst) == 0;
}

void Engine::LeaveOutside(int fd, short op) {
  FdOrderState& state = fd_order_[fd];
  // seq_cst: see NothingOutside.
  if (state.outside[IsWriteOp(op) ? 1 : 0].fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      state.lane_waits.load(std::memory_order_seq_cst) && state.lane_waits.exchange(false, std::memory_order_seq_cst)) {
    lanes_->Ready(fd);
  }
}

void Engine::Uncount(int fd, short op, uint32_t flags) {
  if (fd < 0 || fd >= kFdKinds || !(flags & core::kSlotCounted)) return;
  FdOrderState& state = fd_order_[fd];
  if (flags & core::kSlotOutside) LeaveOutside(fd, op);
  uint32_t busy = state.busy.load(std::memory_order_relaxed);
  while (true) {
    // The last of a busy period forgets what the fd was, before it lets go: once its completion is
    // delivered the program may close the number and reuse it for another kind of file.
    if (busy == 1) state.kind.store(static_cast<uint8_t>(StreamLanes::Kind::kUnknown), std::memory_order_relaxed);
    // seq_cst (a release for the store above): see DispatchOrder.
    if (state.busy.compare_exchange_weak(busy, busy - 1, std::memory_order_seq_cst, std::memory_order_relaxed)) break;
  }
}

bool Engine::MoveToLane(uint32_t index, uint64_t word) {
  core::Slot& slot = slots_.at(index);
  if (!(slot.flags & core::kSlotOutside)) return false;
  const int fd = slot.cb.aio_fildes;
  const short op = slot.cb.aio_lio_opcode;
  const StreamLanes::Order order = StreamLanes::OrderFor(StreamLanes::Classify(fd), op);
  if (order == StreamLanes::Order::kFree) return false;
  if (order == StreamLanes::Order::kAppendPool && slot.partial > 0 && !IsVectored(op)) {
    // Its head runs in the pool, whose blocking call resumes a plain request from its iocb (a
    // vectored one skips `partial` bytes of its iovecs): advance it past what the kernel wrote, or
    // those bytes would be appended twice.
    slot.cb.u.c.buf = static_cast<char*>(slot.cb.u.c.buf) + slot.partial;
    slot.cb.u.c.nbytes -= slot.partial;
    slot.cb.u.c.offset += static_cast<long long>(slot.partial);
  }
  const uint32_t flags = slot.flags;
  slot.flags = (flags & ~core::kSlotOutside) | core::kSlotStream;
  // acq_rel: the lane that acquires kPoolQueued sees the iocb and flags.
  if (!slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolQueued),
                                         std::memory_order_acq_rel, std::memory_order_acquire)) {
    slot.flags = flags;
    return false;
  }
  // At the lane's head: every request of this fd that came after it is in the lane, waiting for it.
  if (lanes_->Push(index, order, /*front=*/true)) {
    counters_.stream_requests.fetch_add(1, std::memory_order_relaxed);
  } else {
    // No thread for the lanes: EAGAIN, or, if the kernel already wrote part, that count (as
    // write(2) when it stops early).
    const int64_t result = slot.partial > 0 ? static_cast<int64_t>(slot.partial) : -EAGAIN;
    if (!Complete(index, SlotState::kPoolQueued, result)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
  }
  // No longer outside (after the push: the lane must find it there when it wakes). Its busy count
  // stays until it completes.
  LeaveOutside(fd, op);
  return true;
}

void Engine::PushToLane(uint32_t index, StreamLanes::Order order) {
  counters_.stream_requests.fetch_add(1, std::memory_order_relaxed);
  if (lanes_->Push(index, order)) return;
  // No thread for the lanes: this request fails with EAGAIN (glibc's answer when it cannot start a
  // helper), unless it was cancelled meanwhile.
  if (!Complete(index, SlotState::kPoolQueued, -EAGAIN)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
}

void Engine::WakeSubmitterOnce() {
  // Only the producer that clears the sleep bit writes the eventfd: one wake-up per sleep, not one per
  // request enqueued while the submitter is on its way up (measured: 0.92 writes per request before).
  if (work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst) & 1) WakeSubmitter();
}

void Engine::WakeSubmitter() {
  int rc = sys_.EventFdWrite(submit_efd_.get(), 1);
  // EAGAIN means the counter is saturated, i.e. already readable. EBADF: the program closed it;
  // the submitter's bounded wait ends within kIdleLookMs and replaces it.
  (void)rc;
}

// ---------------------------------------------------------------- inline I/O

bool Engine::EnqueueDeferred(ProducerToken& token, uint32_t index) {
  if (options_.fallback_threads == 0) {
    // Without the pool nothing is sent with RWF_NOWAIT, so io_submit itself may block (a pipe, a
    // cache miss): never on the caller's thread. Everything goes through the submitter.
    Enqueue(token, index);
    return false;
  }
  // The same add as Enqueue: a submitter on its way to sleep sees it and drains again. Only the
  // wake-up is left to the caller's SubmitInline.
  bool submitter_sleeps = false;
  if (!QueueAndAnnounce(token, index, &submitter_sleeps) || !submitter_sleeps) return false;
  // Shutdown() sets stopping_ and then adds to work_seq_ (both seq_cst): if it kicked the submitter
  // before our add, we see stopping_ here, and wake it ourselves rather than wait for a flush.
  if (stopping_.load(std::memory_order_seq_cst)) {
    WakeSubmitterOnce();
    return false;
  }
  return true;
}

void Engine::SubmitInline(ProducerToken& token) {
  // The submit role is taken by the submitter thread (then it is awake and drains everything) or
  // by another inline caller (which drains only its own token's requests): either way, ours need
  // the submitter thread, so wake it if it sleeps.
  if (submit_role_.exchange(true, std::memory_order_acquire)) {
    WakeSubmitterOnce();
    return;
  }
  if (context_.load(std::memory_order_relaxed) == 0 || exiting_.load(std::memory_order_acquire) ||
      options_.fallback_threads == 0) {
    // Creating the io context (or the pool fallback when it cannot be) is the submitter's job.
    ReleaseRole(submit_role_);
    WakeSubmitterOnce();
    return;
  }
  bool handed_over = false;
  while (true) {
    int64_t room = options_.queue_depth - in_kernel_.load(std::memory_order_acquire);
    size_t want = static_cast<size_t>(std::clamp<int64_t>(room, 0, options_.submit_batch));
    if (want == 0) {
      handed_over = true;  // the kernel queue is full: the submitter waits for room, we do not
      break;
    }
    size_t count = queue_.try_dequeue_bulk_from_producer(token, inline_batch_.data(), want);
    if (count == 0) break;
    counters_.inline_submitted.fetch_add(count, std::memory_order_relaxed);
    learn_.clear();
    const bool requeued = SubmitBatch(inline_batch_.data(), count, &token);
    // Requests the kernel finished inside io_submit (page-cache hits) are in the ring now: reap
    // them here, and learn from what is still running which fds need the eventfd.
    // (Only when no one else is halfway through a reap: a request it has taken from the ring but
    // not yet routed still looks as if it were running, and async is a verdict for good.)
    // A batch whose fds are all known to be async has nothing to learn and nothing finished here:
    // the reaper, woken by their eventfd, routes them. Taking the reap role anyway only made it wait
    // for us (spin, yield, sleep: measured 2 extra context switches per such inline submission).
    const bool worth_reaping = std::any_of(learn_.begin(), learn_.end(),
                                           [this](const Submitted& sub) { return FdKindOf(sub.fd) != kFdAsync; });
    bool settled = worth_reaping;
    if (worth_reaping && in_kernel_.load(std::memory_order_seq_cst) > 0) {
      settled = TakeReapRoleToLearn(learn_.data(), learn_.size());
      if (settled) {
        ReapAvailable(/*inline_caller=*/true);
        ReleaseRole(reap_role_);
      }
    }
    if (settled) LearnFdKinds(learn_.data(), learn_.size());
    EnsureUnsignalledWatched();
    if (requeued) break;  // the kernel queue is full: the rest is the submitter's now
    if (count < want) break;
  }
  ReleaseRole(submit_role_);
  if (handed_over) WakeSubmitterOnce();
}

void Engine::ReapInline() {
  if (in_kernel_.load(std::memory_order_relaxed) == 0) return;
  // If the reap role is taken, its holder reaps until the ring is empty, and the reaper thread
  // (woken by the kernel's eventfd for anything that arrives later) waits for the role.
  if (reap_role_.exchange(true, std::memory_order_acquire)) return;
  ReapAvailable(/*inline_caller=*/true);
  ReleaseRole(reap_role_);
}

bool Engine::TakeReapRoleToLearn(const Submitted* batch, size_t count) {
  if (!reap_role_.exchange(true, std::memory_order_acquire)) return true;
  // Taken: usually by the reaper thread, woken by the eventfd of these very requests while we were
  // still in io_submit, and routing them now. If an fd of this batch is still unknown, wait for it
  // a little: otherwise, when routing is slow (a loaded machine, TSan), we might never learn.
  const bool unknown =
      std::any_of(batch, batch + count, [this](const Submitted& sub) { return FdKindOf(sub.fd) == kFdUnknown; });
  if (!unknown) return false;
  const int64_t give_up = NowNs() + 200 * 1000;
  while (NowNs() < give_up) {
    __builtin_ia32_pause();
    if (!reap_role_.load(std::memory_order_relaxed) && !reap_role_.exchange(true, std::memory_order_acquire)) {
      return true;
    }
  }
  return false;
}

void Engine::LearnFdKinds(const Submitted* batch, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const int fd = batch[i].fd;
    if (fd < 0 || fd >= kFdKinds || !batch[i].read_or_write) continue;
    // Only the slot word is read: a slot freed since (another generation) held a request that
    // completed, whoever has the slot now.
    const uint64_t word = slots_.at(batch[i].index).word.load(std::memory_order_acquire);
    const SlotState state = WordGeneration(word) == batch[i].generation ? WordState(word) : SlotState::kCompleted;
    if (state == SlotState::kInKernel) {
      fd_kind_[fd].store(kFdAsync, std::memory_order_relaxed);
    } else if (state == SlotState::kCompleted || state == SlotState::kPoolQueued ||
               state == SlotState::kPoolRunning) {
      uint8_t unknown = kFdUnknown;
      fd_kind_[fd].compare_exchange_strong(unknown, kFdCompletesInline, std::memory_order_relaxed);
    }
  }
}

void Engine::EnsureUnsignalledWatched() {
  // seq_cst, with WatchUnsignalled's store of reaper_watching_ and its re-check of unsignalled_:
  // either the reaper sees our requests or we see that it is not watching and wake it.
  if (unsignalled_.load(std::memory_order_seq_cst) > 0 && !reaper_watching_.load(std::memory_order_seq_cst)) {
    sys_.EventFdWrite(kernel_efd_.get(), 1);
  }
}

void Engine::Resignal(core::Slot& slot) {
  if (!(slot.flags & core::kSlotUnsignalled)) return;
  slot.flags &= ~core::kSlotUnsignalled;
  slot.cb.u.c.flags |= kIocbFlagResfd;
  unsignalled_.fetch_sub(1, std::memory_order_seq_cst);
}

void Engine::AcquireRole(std::atomic<bool>& role) {
  for (int spins = 0; role.exchange(true, std::memory_order_acquire); ++spins) {
    // Holders keep a role for one drain or one reap; on 2 CPUs the holder may be preempted, so
    // give the CPU away rather than spin a whole time slice, and if it takes long (an inline
    // holder inside an io_submit that blocks), stop burning the CPU altogether.
    if (spins < 64) {
      __builtin_ia32_pause();
    } else if (spins < 1024) {
      sched_yield();
    } else {
      struct timespec pause = {0, 50 * 1000};
      nanosleep(&pause, nullptr);
    }
  }
}

// ---------------------------------------------------------------- completion

bool Engine::Complete(uint32_t index, SlotState from, int64_t result) {
  core::Slot& slot = slots_.at(index);
  uint64_t word = slot.word.load(std::memory_order_relaxed);
  if (WordState(word) != from) return false;
  slot.result.store(result, std::memory_order_relaxed);
  // seq_cst: publishes the result (release) and orders the state before the sink's wake-up check,
  // so a WaitAll that re-checks states after arming cannot miss it.
  if (!slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kCompleted),
                                         std::memory_order_seq_cst, std::memory_order_relaxed)) {
    return false;
  }
  counters_.completed.fetch_add(1, std::memory_order_relaxed);
  if (result == -ECANCELED) {
    counters_.cancelled.fetch_add(1, std::memory_order_relaxed);
  } else if (result < 0) {
    counters_.failed.fetch_add(1, std::memory_order_relaxed);
  }
  // Before the delivery: from it on the program may close the fd and reuse its number.
  if (slot.flags & core::kSlotCounted) Uncount(slot.cb.aio_fildes, slot.cb.aio_lio_opcode, slot.flags);
  core::CompletionSink* sink = slot.sink.load(std::memory_order_relaxed);
  sink->Deliver(index);  // the slot may be freed by its owner from here on: do not touch it
  if (stopping_.load(std::memory_order_seq_cst)) {
    std::lock_guard<std::mutex> lock(sinks_mu_);
    drained_cv_.notify_all();
  }
  return true;
}

// ---------------------------------------------------------------- cancel

absl::StatusOr<CancelResult> Engine::Cancel(uint32_t index, uint32_t generation) {
  if (!slots_.Contains(index)) return absl::InvalidArgumentError("kaio: unknown ticket (EINVAL)");
  core::Slot& slot = slots_.at(index);
  uint64_t word = slot.word.load(std::memory_order_acquire);
  bool rerouted = false;
  while (true) {
    if (WordGeneration(word) != generation) {
      return absl::InvalidArgumentError("kaio: stale or unknown ticket (EINVAL)");
    }
    switch (WordState(word)) {
      case SlotState::kFree:
      case SlotState::kClaimed:
      case SlotState::kReturned:
        return absl::InvalidArgumentError("kaio: stale or unknown ticket (EINVAL)");
      case SlotState::kPoolQueued:
        // The rest of a partial RWF_NOWAIT result, or a stream write waiting to write the rest:
        // data already moved, it cannot be undone. (Relaxed: a stream lane's thread may be
        // writing it for a newer attempt; then the CAS below fails, since it moved the word.)
        if (std::atomic_ref<uint64_t>(slot.partial).load(std::memory_order_relaxed) > 0) {
          return CancelResult::kNotCanceled;
        }
        [[fallthrough]];
      case SlotState::kQueued:
        // Whoever holds it (submitter, pool or a stream lane) completes it with ECANCELED instead
        // of running it. acq_rel: the holder's CAS out of kQueued fails and it sees our state.
        if (slot.word.compare_exchange_weak(word, core::PackWord(generation, SlotState::kCancelledQueued),
                                            std::memory_order_acq_rel, std::memory_order_acquire)) {
          // A lane's request may wait behind an idle stream: have the lanes complete it now. (Not
          // slot.flags to tell: once the CAS is done its holder may complete it and the owner reuse
          // the slot. Kicking for a pool request costs the lanes a look, no more.)
          if (WordState(word) == SlotState::kPoolQueued) lanes_->Kick();
          return CancelResult::kCanceled;
        }
        continue;  // word reloaded
      case SlotState::kCancelledQueued:
        return CancelResult::kCanceled;
      case SlotState::kInKernel: {
        uintptr_t ctx = context_.load(std::memory_order_acquire);
        struct io_event event = {};
        int rc = ctx == 0 ? -EINVAL : sys_.IoCancel(reinterpret_cast<io_context_t>(ctx), &slot.cb, &event);
        if (rc == 0) {
          // Old kernels hand the result back here instead of through the ring.
          Resignal(slot);
          if (Complete(index, SlotState::kInKernel, static_cast<long>(event.res))) {
            in_kernel_.fetch_sub(1, std::memory_order_seq_cst);
            OnRoomFreed();
          }
          return CancelResult::kCanceled;
        }
        // -EINPROGRESS: the kernel will complete it (with -ECANCELED) through the ring.
        if (rc == -EINPROGRESS) return CancelResult::kCanceled;
        // A lone read or write the kernel refused at once (RWF_NOWAIT on an idle stream: EAGAIN) is
        // in the ring already, or is about to be: route it, and it goes to its lane, where it can be
        // cancelled. Only a request really running on a device is "not cancelled" after this.
        if (!rerouted && FdKindOf(slot.cb.aio_fildes) != kFdAsync) {  // a device fd's request stays
          rerouted = true;
          // The caller's signals are blocked meanwhile: reaping delivers completions, and a
          // handler that waited for one on this thread (aio_suspend) would wait for ever.
          sigset_t all_signals, caller_mask;
          sigfillset(&all_signals);
          pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
          for (int tries = 0; tries < 100; ++tries) {
            ReapInline();
            word = slot.word.load(std::memory_order_acquire);
            if (WordGeneration(word) != generation || WordState(word) != SlotState::kInKernel) break;
            sched_yield();
          }
          pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
          if (WordGeneration(word) != generation) return CancelResult::kAllDone;  // done and freed meanwhile
          if (WordState(word) != SlotState::kInKernel) continue;
        }
        // Regular files: io_cancel says EINVAL; the request runs to its real result.
        return CancelResult::kNotCanceled;
      }
      case SlotState::kPoolRunning:
        return CancelResult::kNotCanceled;
      case SlotState::kStreamTrying:
        // A non-blocking attempt, over in microseconds: its outcome decides (data moved: not
        // cancelled; nothing there: back to kPoolQueued, and cancelled). Answering "not cancelled"
        // now would depend on the moment, where glibc's answer for a waiting request does not.
        sched_yield();
        word = slot.word.load(std::memory_order_acquire);
        continue;
      case SlotState::kCompleted:
        return CancelResult::kAllDone;
    }
    return absl::InternalError("kaio: slot in an impossible state");
  }
}

// ---------------------------------------------------------------- sinks, shutdown, stats

void Engine::RegisterSink(core::CompletionSink* sink) {
  std::lock_guard<std::mutex> lock(sinks_mu_);
  sinks_.push_back(sink);
}

void Engine::UnregisterSink(core::CompletionSink* sink) {
  std::lock_guard<std::mutex> lock(sinks_mu_);
  sinks_.erase(std::remove(sinks_.begin(), sinks_.end(), sink), sinks_.end());
  counters_.accepted_by_gone_sinks.fetch_add(sink->accepted.load(std::memory_order_acquire),
                                             std::memory_order_relaxed);
}

size_t Engine::registered_sinks() const {
  std::lock_guard<std::mutex> lock(sinks_mu_);
  return sinks_.size();
}

void Engine::NotifyAcceptedChanged() {
  std::lock_guard<std::mutex> lock(sinks_mu_);
  drained_cv_.notify_all();
}

void Engine::Shutdown() {
  stopping_.store(true, std::memory_order_seq_cst);
  // An inline_io requester may have queued requests it has not flushed yet: the submitter takes them.
  work_seq_.fetch_add(2, std::memory_order_seq_cst);
  WakeSubmitterOnce();
  std::unique_lock<std::mutex> lock(sinks_mu_);
  drained_cv_.wait(lock, [this] {
    for (core::CompletionSink* sink : sinks_) {
      // seq_cst: pairs with Complete()'s check of stopping_ (see there).
      if (sink->delivered.load(std::memory_order_seq_cst) != sink->accepted.load(std::memory_order_seq_cst)) {
        return false;
      }
    }
    return true;
  });
}

ServiceStats Engine::Stats() const {
  ServiceStats s;
  {
    std::lock_guard<std::mutex> lock(sinks_mu_);
    s.requests_accepted = counters_.accepted_by_gone_sinks.load(std::memory_order_relaxed);
    for (core::CompletionSink* sink : sinks_) s.requests_accepted += sink->accepted.load(std::memory_order_relaxed);
  }
  s.requests_completed = counters_.completed.load(std::memory_order_relaxed);
  s.requests_cancelled = counters_.cancelled.load(std::memory_order_relaxed);
  s.requests_failed = counters_.failed.load(std::memory_order_relaxed);
  s.in_flight = s.requests_accepted > s.requests_completed ? s.requests_accepted - s.requests_completed : 0;
  s.kernel_submitted = counters_.kernel_submitted.load(std::memory_order_relaxed);
  s.io_submit_calls = counters_.io_submit_calls.load(std::memory_order_relaxed);
  s.average_batch = s.io_submit_calls == 0 ? 0.0 : static_cast<double>(s.kernel_submitted) / s.io_submit_calls;
  s.io_submit_eagain = counters_.io_submit_eagain.load(std::memory_order_relaxed);
  s.pool_requests = counters_.pool_requests.load(std::memory_order_relaxed);
  s.nowait_retries = counters_.nowait_retries.load(std::memory_order_relaxed);
  s.stream_requests = counters_.stream_requests.load(std::memory_order_relaxed);
  s.max_io_submit_ns = counters_.max_io_submit_ns.load(std::memory_order_relaxed);
  s.contexts_created = counters_.contexts_created.load(std::memory_order_relaxed);
  s.contexts_released = counters_.contexts_released.load(std::memory_order_relaxed);
  s.pool_threads = counters_.pool_threads.load(std::memory_order_relaxed);
  s.pool_running = counters_.pool_running.load(std::memory_order_relaxed);
  s.queue_block_allocations = QueueTraits::allocations.load(std::memory_order_relaxed);
  s.inline_submitted = counters_.inline_submitted.load(std::memory_order_relaxed);
  s.inline_reaped = counters_.inline_reaped.load(std::memory_order_relaxed);
  return s;
}

// ---------------------------------------------------------------- submitter

void Engine::SubmitterLoop() {
  std::vector<uint32_t> batch(static_cast<size_t>(options_.submit_batch));
  moodycamel::ConsumerToken consumer(queue_);
  while (true) {
    // acquire: pairs with producers' adds, so the drain below sees what they enqueued before.
    uint64_t seq = work_seq_.load(std::memory_order_acquire);
    AcquireRole(submit_role_);
    int64_t room = options_.queue_depth - in_kernel_.load(std::memory_order_acquire);
    size_t want = static_cast<size_t>(std::clamp<int64_t>(room, 0, options_.submit_batch));
    size_t count = want == 0 ? 0 : queue_.try_dequeue_bulk(consumer, batch.data(), want);
    if (count > 0) {
      SubmitBatch(batch.data(), count, nullptr);
      ReleaseRole(submit_role_);
      continue;
    }
    if (exiting_.load(std::memory_order_acquire)) {
      ReleaseRole(submit_role_);
      break;
    }
    absl::Time now = absl::Now();
    MaybeReleaseContext(now);
    absl::Time deadline = absl::InfiniteFuture();
    if (context_.load(std::memory_order_relaxed) != 0) {
      deadline = std::max(last_kernel_activity_ + options_.idle_release, now + absl::Milliseconds(1));
    }
    ReleaseRole(submit_role_);
    // Sleep, unless a producer added work since `seq` (then the CAS fails and we drain again).
    if (!work_seq_.compare_exchange_strong(seq, seq | 1, std::memory_order_seq_cst)) continue;
    if (want == 0) {
      // Sleeping for room: ask the reaper to wake us. seq_cst on the flag and on in_kernel_, here
      // and in ReapAvailable, so either we see its decrement or it sees the flag.
      room_wanted_.store(true, std::memory_order_seq_cst);
      if (in_kernel_.load(std::memory_order_seq_cst) < options_.queue_depth) {
        room_wanted_.store(false, std::memory_order_relaxed);
        work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst);  // the reaper freed room meanwhile
        continue;
      }
    }
    WaitForWork(deadline);
    work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst);
  }
}

void Engine::WaitForWork(absl::Time deadline) {
  const int fd = submit_efd_.get();
  struct pollfd pfd = {fd, POLLIN, 0};
  // Bounded even when idle: a program that closes the eventfd while we wait here leaves us polling
  // its old file, which nobody can write any more.
  int timeout_ms = core::kIdleLookMs;
  if (deadline != absl::InfiniteFuture()) {
    timeout_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(deadline - absl::Now(), absl::Milliseconds(1))), 0, timeout_ms));
  }
  const int got = poll(&pfd, 1, timeout_ms);
  if (got > 0 && !(pfd.revents & POLLNVAL)) {
    uint64_t value;
    sys_.EventFdRead(fd, &value);
  } else if (got == 0 || (pfd.revents & POLLNVAL)) {
    submit_efd_.RepairIfLost(fd);  // one fstat per idle second
  }
}

bool Engine::EnsureContext() {
  if (context_.load(std::memory_order_relaxed) != 0) return true;
  // After a failure, io_setup is tried again only after a back-off (the system-wide limit does not
  // free up by the microsecond): a program doing 1,000 reads made 1,000 calls and printed 1,000 lines.
  const absl::Time now = absl::Now();
  if (now < next_setup_attempt_) return false;
  io_context_t ctx = nullptr;
  int rc = sys_.IoSetup(options_.queue_depth, &ctx);
  if (rc < 0) {
    setup_backoff_ = std::clamp(setup_backoff_ * 2, absl::Milliseconds(100), absl::Seconds(10));
    next_setup_attempt_ = now + setup_backoff_;
    if (setup_failure_reported_) return false;  // said once per run of failures
    setup_failure_reported_ = true;
    if (rc == -EAGAIN) {
      std::fprintf(stderr,
                   "kaio: io_setup(%d) failed with EAGAIN: the system-wide AIO limit is exhausted "
                   "(fs.aio-nr=%s, fs.aio-max-nr=%s). Raise it with `sysctl -w fs.aio-max-nr=N` or lower "
                   "ServiceOptions::queue_depth. Requests run in the blocking pool meanwhile; kaio tries "
                   "again every few seconds and says nothing more until it succeeds.\n",
                   options_.queue_depth, ReadProcValue("/proc/sys/fs/aio-nr").c_str(),
                   ReadProcValue("/proc/sys/fs/aio-max-nr").c_str());
    } else {
      std::fprintf(stderr,
                   "kaio: io_setup(%d) failed: %s; requests run in the blocking pool meanwhile (kaio "
                   "tries again every few seconds and says nothing more until it succeeds).\n",
                   options_.queue_depth, std::strerror(-rc));
    }
    return false;
  }
  if (setup_failure_reported_) std::fprintf(stderr, "kaio: io_setup(%d) succeeded again\n", options_.queue_depth);
  setup_failure_reported_ = false;
  setup_backoff_ = absl::ZeroDuration();
  next_setup_attempt_ = absl::InfinitePast();
  // release: Cancel() acquires the context to call io_cancel on it.
  context_.store(reinterpret_cast<uintptr_t>(ctx), std::memory_order_release);
  counters_.contexts_created.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Engine::MaybeReleaseContext(absl::Time now) {
  uintptr_t ctx = context_.load(std::memory_order_relaxed);
  if (ctx == 0 || now - last_kernel_activity_ < options_.idle_release) return;
  // Only the submit role's holder (us, now) adds to in_kernel_, so once it reads 0 here it stays 0. The reaper sets
  // reaping_ before it reads in_kernel_ and calls io_getevents (which reads the ring in user space:
  // a released context would be unmapped memory); seq_cst on both sides means one of us sees the
  // other.
  if (in_kernel_.load(std::memory_order_seq_cst) != 0 || reaping_.load(std::memory_order_seq_cst)) return;
  context_.store(0, std::memory_order_release);
  sys_.IoDestroy(reinterpret_cast<io_context_t>(ctx));
  counters_.contexts_released.fetch_add(1, std::memory_order_relaxed);
}

bool Engine::SubmitBatch(uint32_t* batch, size_t count, ProducerToken* requeue) {
  struct iocb** cbs = submit_iocbs_.data();
  size_t kernel_count = 0;
  int64_t unsignalled_count = 0;
  bool goes_to_device = false;
  bool have_context = EnsureContext();
  // Which requests need their call order kept (streams, O_APPEND writes): see DispatchOrder. A lone
  // request goes the usual way only if the kernel can refuse what would block (RWF_NOWAIT: a pool
  // to take the refusal, and a context).
  const bool lone_may_go = kLoneRequestsSkipTheLook && have_context && options_.fallback_threads > 0;
  KindCache kind_cache;
  for (size_t i = 0; i < count; ++i) {
    uint32_t index = batch[i];
    core::Slot& slot = slots_.at(index);
    // acquire: pairs with the producer's release into kQueued (or a canceller's CAS).
    uint64_t word = slot.word.load(std::memory_order_acquire);
    if (WordState(word) == SlotState::kCancelledQueued) {
      Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      continue;
    }
    if (IsReadOrWrite(slot.cb.aio_lio_opcode) && slot.cb.u.c.offset < 0) {
      // As pread/pwrite (and glibc's aio_read/aio_write, which call them): EINVAL before anything
      // else is looked at, the fd included, and whatever kind of file it is (the stream lanes
      // ignore offsets). The C++ API refuses a negative offset at submission already.
      if (!Complete(index, SlotState::kQueued, -EINVAL)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      continue;
    }
    if (IsReadOrWrite(slot.cb.aio_lio_opcode)) {
      const StreamLanes::Order classified = DispatchOrder(slot, lone_may_go, &kind_cache);
      if (classified != StreamLanes::Order::kFree) {
        slot.flags |= core::kSlotStream;  // before the release below, for Cancel and the pool
        if (slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolQueued),
                                              std::memory_order_acq_rel, std::memory_order_acquire)) {
          PushToLane(index, classified);
        } else {
          Complete(index, SlotState::kCancelledQueued, -ECANCELED);
        }
        continue;
      }
    }
    if (!have_context || (slot.flags & core::kSlotForcePool)) {
      if (slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolQueued),
                                            std::memory_order_acq_rel, std::memory_order_acquire)) {
        PoolPush(index);
      } else {
        Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      }
      continue;
    }
    if (IsReadOrWrite(slot.cb.aio_lio_opcode) && !(slot.flags & core::kSlotForceKernel) &&
        options_.fallback_threads > 0) {
      // Ask the kernel to refuse (EAGAIN) rather than block us; refusals go to the pool.
      slot.cb.aio_rw_flags |= RWF_NOWAIT;
      slot.flags |= core::kSlotNowait;
    }
    // An inline caller reaps right after io_submit: for an fd whose requests finish inside it,
    // the eventfd would only wake the reaper for nothing (see fd_kind_).
    const bool completes_inline = FdCompletesInline(slot.cb.aio_fildes);
    if (!completes_inline) goes_to_device = true;
    const bool unsignalled = requeue != nullptr && (slot.flags & core::kSlotNowait) && completes_inline;
    if (unsignalled) {
      slot.cb.u.c.flags &= ~kIocbFlagResfd;
      slot.flags |= core::kSlotUnsignalled;
    }
    if (!slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kInKernel),
                                           std::memory_order_acq_rel, std::memory_order_acquire)) {
      if (unsignalled) {
        slot.cb.u.c.flags |= kIocbFlagResfd;
        slot.flags &= ~core::kSlotUnsignalled;
      }
      Complete(index, SlotState::kCancelledQueued, -ECANCELED);  // cancelled just now
      continue;
    }
    if (unsignalled) ++unsignalled_count;
    if (requeue != nullptr) {
      submit_meta_[kernel_count] = Submitted{index, WordGeneration(word), slot.cb.aio_fildes,
                                             IsReadOrWrite(slot.cb.aio_lio_opcode)};
    }
    if (core::PlantedBug(core::PlantedBugKind::kMisdirectedWrite) &&
        (slot.cb.aio_lio_opcode == IO_CMD_PWRITE || slot.cb.aio_lio_opcode == IO_CMD_PWRITEV)) {
      slot.cb.u.c.offset ^= 4096;
    }
    cbs[kernel_count++] = &slot.cb;
  }
  if (kernel_count == 0) return false;
  io_context_t ctx = reinterpret_cast<io_context_t>(context_.load(std::memory_order_relaxed));
  // Counted before io_submit: a completion can be reaped before io_submit returns.
  in_kernel_.fetch_add(static_cast<int64_t>(kernel_count), std::memory_order_seq_cst);
  if (unsignalled_count > 0) unsignalled_.fetch_add(unsignalled_count, std::memory_order_seq_cst);
  last_kernel_activity_ = absl::Now();
  size_t done = 0;
  int eagain_streak = 0;
  while (done < kernel_count) {
    int64_t start = NowNs();
    // A call's requests reach the device only when it returns (the block layer plugs them): split
    // a batch that goes to a device (see ServiceOptions::device_submit_chunk).
    size_t nr = kernel_count - done;
    if (goes_to_device) nr = std::min(nr, device_chunk_);
    int rc = sys_.IoSubmit(ctx, static_cast<long>(nr), cbs + done);
    int64_t took = NowNs() - start;
    counters_.io_submit_calls.fetch_add(1, std::memory_order_relaxed);
    if (took > counters_.max_io_submit_ns.load(std::memory_order_relaxed)) {
      counters_.max_io_submit_ns.store(took, std::memory_order_relaxed);  // single writer
    }
    if (rc > 0) {
      if (requeue != nullptr) {
        for (int i = 0; i < rc; ++i) learn_.push_back(submit_meta_[done + static_cast<size_t>(i)]);
      }
      counters_.kernel_submitted.fetch_add(static_cast<uint64_t>(rc), std::memory_order_relaxed);
      done += static_cast<size_t>(rc);
      eagain_streak = 0;
      continue;
    }
    struct iocb* first = cbs[done];
    // EBADF or EINVAL for the completion eventfd (IOCB_FLAG_RESFD), not the request: the program
    // closed it or put another file on its number. Replace it and send the rest again.
    if ((rc == -EBADF || rc == -EINVAL) && (first->u.c.flags & kIocbFlagResfd) &&
        kernel_efd_.RepairIfLost(static_cast<int>(first->u.c.resfd))) {
      kernel_efd_replaced_.store(true, std::memory_order_relaxed);  // a hint for the reaper's timeout
      const int now_fd = kernel_efd_.get();
      for (size_t i = done; i < kernel_count; ++i) cbs[i]->u.c.resfd = static_cast<unsigned>(now_fd);
      continue;
    }
    uint32_t index = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(first->data));
    core::Slot& slot = slots_.at(index);
    if (rc != -EINTR) Resignal(slot);  // the kernel did not take it (only EINTR retries it as it is)
    switch (ClassifySubmitError(rc == 0 ? -EAGAIN : rc, slot.flags & core::kSlotNowait)) {
      case SubmitErrorClass::kInterrupted:
        continue;
      case SubmitErrorClass::kRetryLater: {
        counters_.io_submit_eagain.fetch_add(1, std::memory_order_relaxed);
        if (requeue != nullptr) {
          // An inline caller must not wait for room: the rest goes back to the queue (never
          // seen by the kernel, so still cancellable) for the submitter thread.
          for (size_t i = done; i < kernel_count; ++i) {
            uint32_t rest = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(cbs[i]->data));
            core::Slot& s = slots_.at(rest);
            Resignal(s);
            uint64_t w = s.word.load(std::memory_order_acquire);
            if (s.word.compare_exchange_strong(w, core::PackWord(WordGeneration(w), SlotState::kQueued),
                                               std::memory_order_acq_rel)) {
              if (!queue_.enqueue(*requeue, rest)) Complete(rest, SlotState::kQueued, -ENOMEM);
            } else {
              Complete(rest, SlotState::kInKernel, -EAGAIN);
            }
          }
          in_kernel_.fetch_sub(static_cast<int64_t>(kernel_count - done), std::memory_order_seq_cst);
          OnRoomFreed();
          work_seq_.fetch_add(2, std::memory_order_seq_cst);
          WakeSubmitterOnce();
          return true;
        }
        // The kernel's ring is full (other users of this context's share of aio-nr, or a fault).
        // Wait for the reaper to make room; if nothing of ours is in flight, the refusal is not
        // about our own queue, so after a while the rest goes to the blocking pool.
        int64_t ours_in_kernel = in_kernel_.load(std::memory_order_acquire) - static_cast<int64_t>(kernel_count - done);
        if (ours_in_kernel <= 0 && ++eagain_streak > 100) {
          for (size_t i = done; i < kernel_count; ++i) {
            uint32_t rest = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(cbs[i]->data));
            core::Slot& s = slots_.at(rest);
            Resignal(s);
            uint64_t w = s.word.load(std::memory_order_acquire);
            if (options_.fallback_threads > 0 &&
                s.word.compare_exchange_strong(w, core::PackWord(WordGeneration(w), SlotState::kPoolQueued),
                                               std::memory_order_acq_rel)) {
              PoolPush(rest);
            } else {
              Complete(rest, SlotState::kInKernel, -EAGAIN);
            }
          }
          in_kernel_.fetch_sub(static_cast<int64_t>(kernel_count - done), std::memory_order_seq_cst);
          OnRoomFreed();
          return false;
        }
        uint64_t seq = work_seq_.load(std::memory_order_acquire);
        if (work_seq_.compare_exchange_strong(seq, seq | 1, std::memory_order_seq_cst)) {
          room_wanted_.store(true, std::memory_order_seq_cst);
          WaitForWork(absl::Now() + absl::Milliseconds(1));
          work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst);
        }
        continue;
      }
      case SubmitErrorClass::kUnsupported: {
        // This fd cannot promise not to block: run it in the pool (or its lane, for a tty).
        uint64_t w = slot.word.load(std::memory_order_acquire);
        if (MoveToLane(index, w)) break;
        if (slot.word.compare_exchange_strong(w, core::PackWord(WordGeneration(w), SlotState::kPoolQueued),
                                              std::memory_order_acq_rel)) {
          PoolPush(index);
        }
        break;
      }
      case SubmitErrorClass::kFailRequest:
        // ESPIPE: as in RouteKernelResult (a lone socket request with an offset).
        if (rc == -ESPIPE && MoveToLane(index, slot.word.load(std::memory_order_acquire))) break;
        Complete(index, SlotState::kInKernel, rc);
        break;
    }
    in_kernel_.fetch_sub(1, std::memory_order_seq_cst);
    OnRoomFreed();
    ++done;
  }
  return false;
}

// ---------------------------------------------------------------- reaper

void Engine::ReaperLoop() {
  bool look_again_soon = false;
  while (true) {
    if (unsignalled_.load(std::memory_order_seq_cst) > 0) {
      WatchUnsignalled();
    } else {
      // A failed io_getevents may have left events whose eventfd count is spent: look again soon.
      // After a replacement of the eventfd, requests sent before it announce themselves on the old
      // one: look every millisecond until nothing is in flight.
      int timeout_ms = look_again_soon ? 10 : core::kIdleLookMs;
      if (kernel_efd_replaced_.load(std::memory_order_relaxed)) {
        if (in_kernel_.load(std::memory_order_seq_cst) == 0) {
          kernel_efd_replaced_.store(false, std::memory_order_relaxed);
        } else {
          timeout_ms = 1;
        }
      }
      WaitForCompletions(timeout_ms);
      AcquireRole(reap_role_);
      look_again_soon = !ReapAvailable(/*inline_caller=*/false);
      ReleaseRole(reap_role_);
    }
    if (exiting_.load(std::memory_order_acquire) && in_kernel_.load(std::memory_order_acquire) == 0) break;
  }
}

void Engine::WaitForCompletions(int timeout_ms) {
  // poll, then read: a blocking read(2) cannot time out, and a program that closed the eventfd
  // while we were in it would leave us reading a file nobody can signal.
  const int fd = kernel_efd_.get();
  struct pollfd pfd = {fd, POLLIN, 0};
  const int got = poll(&pfd, 1, timeout_ms);
  if (got > 0 && !(pfd.revents & POLLNVAL)) {
    uint64_t value;
    sys_.EventFdRead(fd, &value);  // a failure (fault injection) only means the ring is read anyway
  } else if ((got == 0 && timeout_ms == core::kIdleLookMs) || (got > 0 && (pfd.revents & POLLNVAL))) {
    if (kernel_efd_.RepairIfLost(fd)) kernel_efd_replaced_.store(true, std::memory_order_relaxed);
  }
}

void Engine::WatchUnsignalled() {
  reaper_watching_.store(true, std::memory_order_seq_cst);
  while (unsignalled_.load(std::memory_order_seq_cst) > 0) {
    // Requests without the eventfd flag announce nothing: look at the ring every millisecond (or
    // at once when a flagged one completes). Only a wrong guess about an fd lands here, and that
    // fd is then async for good, so this is rare; the reap role stays free meanwhile.
    WaitForCompletions(1);
    AcquireRole(reap_role_);
    ReapAvailable(/*inline_caller=*/false);
    ReleaseRole(reap_role_);
    if (exiting_.load(std::memory_order_acquire) && in_kernel_.load(std::memory_order_acquire) == 0) break;
  }
  // seq_cst, with EnsureUnsignalledWatched: after this store the caller re-checks unsignalled_.
  reaper_watching_.store(false, std::memory_order_seq_cst);
}

bool Engine::ReapAvailable(bool inline_caller) {
  std::vector<struct io_event>& events = reap_events_;
  bool emptied = true;
  while (true) {
    reaping_.store(true, std::memory_order_seq_cst);
    if (in_kernel_.load(std::memory_order_seq_cst) == 0) break;
    io_context_t ctx = reinterpret_cast<io_context_t>(context_.load(std::memory_order_acquire));
    struct timespec zero = {0, 0};
    int got = sys_.IoGetEvents(ctx, 0, options_.reap_batch, events.data(), &zero);
    if (got == -EINTR) continue;
    if (got < 0) {
      if (!getevents_failing_) std::fprintf(stderr, "kaio: io_getevents failed: %s\n", std::strerror(-got));
      getevents_failing_ = true;  // one message per run of failures, not one per retry
      emptied = false;
      break;
    }
    getevents_failing_ = false;
    if (got == 0) break;
    RouteEvents(events.data(), got, inline_caller);
    // No early exit on a short batch: io_getevents may return fewer events than are ready, and the
    // eventfd count that announced the rest is already consumed. Emptiness is the only exit (the
    // ring is read in user space, so the final empty look costs no syscall).
  }
  reaping_.store(false, std::memory_order_seq_cst);
  return emptied;
}

void Engine::RouteEvents(const struct io_event* events, int got, bool inline_caller) {
  for (int i = 0; i < got; ++i) {
    uint32_t index = static_cast<uint32_t>(reinterpret_cast<uintptr_t>(events[i].data));
    if (core::PlantedBug(core::PlantedBugKind::kLostCompletion)) continue;
    // Errors are a negative res (res2 is 0); the seed read res2, which is wrong.
    RouteKernelResult(index, static_cast<long>(events[i].res));
  }
  if (inline_caller) counters_.inline_reaped.fetch_add(static_cast<uint64_t>(got), std::memory_order_relaxed);
  in_kernel_.fetch_sub(got, std::memory_order_seq_cst);
  OnRoomFreed();
}

void Engine::OnRoomFreed() {
  // The submitter may sleep waiting for room: wake it. Only then: a submitter that sleeps for
  // want of work is not woken by every reap (measured: that was one needless wake-up, two context
  // switches, per reaped batch). Called after every decrement of in_kernel_ (seq_cst, see the
  // submitter's sleep).
  if (room_wanted_.load(std::memory_order_seq_cst) && room_wanted_.exchange(false, std::memory_order_seq_cst)) {
    work_seq_.fetch_add(2, std::memory_order_seq_cst);
    WakeSubmitterOnce();
  }
}

void Engine::RouteKernelResult(uint32_t index, int64_t result) {
  core::Slot& slot = slots_.at(index);
  // acquire: the kernel hand-off is invisible to TSan and to the memory model; this pairs with the
  // submitter's release into kInKernel, so the iocb and flags it wrote are visible here.
  uint64_t word = slot.word.load(std::memory_order_acquire);
  Resignal(slot);  // whatever happens next (pool, another submission), it gets the eventfd back
  // A lone read or write on a socket with an offset: kernel AIO says ESPIPE, where pread's ESPIPE
  // makes glibc read; its lane ignores the offset.
  if (result == -ESPIPE && MoveToLane(index, word)) return;
  if ((slot.flags & core::kSlotNowait) && (result == -EAGAIN || result == -EOPNOTSUPP)) {
    // The kernel would have blocked: the request is not done, it needs a thread that may block,
    // or, on a stream, its lane (where it waits for readiness in no thread).
    counters_.nowait_retries.fetch_add(1, std::memory_order_relaxed);
    slot.cb.aio_rw_flags &= ~RWF_NOWAIT;
    slot.flags &= ~core::kSlotNowait;
    if (MoveToLane(index, word)) return;
    int fl = fcntl(slot.cb.aio_fildes, F_GETFL);
    if (result == -EAGAIN && fl >= 0 && (fl & O_DIRECT)) {
      // O_DIRECT refused for a moment (device queue full): back to the kernel, without NOWAIT.
      slot.flags |= core::kSlotForceKernel;
      if (slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kQueued),
                                            std::memory_order_acq_rel)) {
        if (!queue_.enqueue(*reaper_token_, index)) {
          Complete(index, SlotState::kQueued, -ENOMEM);
          return;
        }
        if (work_seq_.fetch_add(2, std::memory_order_seq_cst) & 1) WakeSubmitterOnce();
      }
      return;
    }
    if (slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolQueued),
                                          std::memory_order_acq_rel)) {
      PoolPush(index);
    }
    return;
  }
  if ((slot.flags & core::kSlotNowait) && result > 0 && StoppedShort(slot.cb, result)) {
    // The non-blocking attempt moved only part (a pipe's capacity, the cached prefix of a file): the
    // blocking call would have done it all, so the pool finishes the rest (a stream's lane, if it
    // is one: it skips `partial` bytes of plain and vectored requests alike). A vectored request
    // keeps the caller's iovec array untouched; the worker skips the first `partial` bytes of it.
    slot.partial += static_cast<uint64_t>(result);
    slot.cb.aio_rw_flags &= ~RWF_NOWAIT;
    slot.flags &= ~core::kSlotNowait;
    if (MoveToLane(index, word)) return;
    if (!IsVectored(slot.cb.aio_lio_opcode)) {
      slot.cb.u.c.buf = static_cast<char*>(slot.cb.u.c.buf) + result;
      slot.cb.u.c.nbytes -= static_cast<uint64_t>(result);
    }
    slot.cb.u.c.offset += result;
    slot.cb.aio_rw_flags &= ~RWF_NOWAIT;
    slot.flags &= ~core::kSlotNowait;
    if (slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolQueued),
                                          std::memory_order_acq_rel)) {
      PoolPush(index);
    }
    return;
  }
  Complete(index, SlotState::kInKernel, result);
}

bool Engine::StoppedShort(const struct iocb& cb, int64_t result) {
  if (static_cast<uint64_t>(result) >= RequestBytes(cb)) return false;
  if (cb.aio_lio_opcode == IO_CMD_PWRITE || cb.aio_lio_opcode == IO_CMD_PWRITEV) return true;
  if (cb.aio_lio_opcode != IO_CMD_PREAD && cb.aio_lio_opcode != IO_CMD_PREADV) return false;
  // A short read of a pipe or socket is its real answer; of a regular file, only at end of file.
  struct stat st;
  return fstat(cb.aio_fildes, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
}

// ---------------------------------------------------------------- fallback pool

void Engine::PoolPush(uint32_t index) {
  counters_.pool_requests.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    pool_queue_.push_back(index);
    if (pool_idle_ > 0 || static_cast<int>(pool_threads_.size()) >= std::max(1, options_.fallback_threads)) {
      pool_cv_.notify_one();
      return;
    }
    // This may run on an inline_io requester's thread: the worker must not inherit its signal mask
    // (kaio's threads block every signal, so a process-directed signal never lands on them).
    sigset_t all_signals, caller_mask;
    sigfillset(&all_signals);
    pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
    bool started = true;
    try {
      pool_threads_.emplace_back([this] { PoolLoop(); });
    } catch (const std::system_error&) {
      started = false;  // RLIMIT_NPROC, address space: the workers there are will get to it
    }
    pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
    if (started) {
      std::string name = absl::StrCat("kaio-pool-", pool_threads_.size() - 1);
      pthread_setname_np(pool_threads_.back().native_handle(), name.substr(0, 15).c_str());
      counters_.pool_threads.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!pool_threads_.empty()) {
      pool_cv_.notify_one();
      return;
    }
    // No worker at all, and none to be had: this request fails with EAGAIN (glibc's answer when it
    // cannot start a helper thread) instead of waiting for ever; the next one tries again.
    pool_queue_.erase(std::find(pool_queue_.begin(), pool_queue_.end(), index));
  }
  core::Slot& slot = slots_.at(index);
  const bool from_lane = (slot.flags & core::kSlotStream) != 0;
  const int lane_fd = slot.cb.aio_fildes;
  const short lane_op = slot.cb.aio_lio_opcode;
  if (!Complete(index, SlotState::kPoolQueued, -EAGAIN)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
  if (from_lane) lanes_->OnPoolDone(lane_fd, lane_op);
}

void Engine::PoolLoop() {
  std::unique_lock<std::mutex> lock(pool_mu_);
  while (true) {
    if (pool_queue_.empty()) {
      if (exiting_.load(std::memory_order_acquire)) return;
      ++pool_idle_;
      pool_cv_.wait(lock, [this] { return !pool_queue_.empty() || exiting_.load(std::memory_order_acquire); });
      --pool_idle_;
      continue;
    }
    uint32_t index = pool_queue_.front();
    pool_queue_.pop_front();
    lock.unlock();
    core::Slot& slot = slots_.at(index);
    uint64_t word = slot.word.load(std::memory_order_acquire);
    // A lane's head: once it is complete the slot is its owner's, so note where it came from first.
    const bool from_lane = (slot.flags & core::kSlotStream) != 0;
    const int lane_fd = slot.cb.aio_fildes;
    const short lane_op = slot.cb.aio_lio_opcode;
    if (WordState(word) == SlotState::kPoolQueued &&
        slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kPoolRunning),
                                          std::memory_order_acq_rel)) {
      counters_.pool_running.fetch_add(1, std::memory_order_relaxed);
      int64_t result = RunBlocking(slot.cb, slot.partial);
      if (slot.partial > 0) {
        // What the kernel already moved counts; an error on the rest is a short result, as write(2).
        result = result >= 0 ? result + static_cast<int64_t>(slot.partial) : static_cast<int64_t>(slot.partial);
      }
      counters_.pool_running.fetch_sub(1, std::memory_order_relaxed);
      Complete(index, SlotState::kPoolRunning, result);
    } else {
      Complete(index, SlotState::kCancelledQueued, -ECANCELED);
    }
    if (from_lane) lanes_->OnPoolDone(lane_fd, lane_op);
    lock.lock();
  }
}

uint64_t Engine::RequestBytes(const struct iocb& cb) {
  if (!IsVectored(cb.aio_lio_opcode)) return cb.u.c.nbytes;
  const auto* iov = static_cast<const struct iovec*>(cb.u.c.buf);
  uint64_t total = 0;
  for (uint64_t i = 0; i < cb.u.c.nbytes; ++i) total += iov[i].iov_len;
  return total;
}

int64_t Engine::RunBlocking(const struct iocb& cb, uint64_t vectored_skip) {
  const int fd = cb.aio_fildes;
  void* buf = cb.u.c.buf;
  const long long offset = cb.u.c.offset;
  const auto* iov = static_cast<const struct iovec*>(buf);
  int iovcnt = static_cast<int>(cb.u.c.nbytes);
  std::vector<struct iovec> rest;  // the pool's slow path: one allocation for a resumed vectored request
  if (IsVectored(cb.aio_lio_opcode) && vectored_skip > 0) {
    for (int i = 0; i < iovcnt; ++i) {
      if (vectored_skip >= iov[i].iov_len) {
        vectored_skip -= iov[i].iov_len;
        continue;
      }
      rest.push_back({static_cast<char*>(iov[i].iov_base) + vectored_skip, iov[i].iov_len - vectored_skip});
      vectored_skip = 0;
    }
    iov = rest.data();
    iovcnt = static_cast<int>(rest.size());
  }
  ssize_t n = -1;
  while (true) {
    switch (cb.aio_lio_opcode) {
      case IO_CMD_PREAD:
        n = pread(fd, buf, cb.u.c.nbytes, offset);
        if (n < 0 && errno == ESPIPE) n = read(fd, buf, cb.u.c.nbytes);  // pipes, sockets
        break;
      case IO_CMD_PWRITE:
        n = pwrite(fd, buf, cb.u.c.nbytes, offset);
        if (n < 0 && errno == ESPIPE) n = write(fd, buf, cb.u.c.nbytes);
        break;
      case IO_CMD_PREADV:
        n = preadv(fd, iov, iovcnt, offset);
        if (n < 0 && errno == ESPIPE) n = readv(fd, iov, iovcnt);
        break;
      case IO_CMD_PWRITEV:
        n = pwritev(fd, iov, iovcnt, offset);
        if (n < 0 && errno == ESPIPE) n = writev(fd, iov, iovcnt);
        break;
      case IO_CMD_FSYNC:
        n = fsync(fd);
        break;
      case IO_CMD_FDSYNC:
        n = fdatasync(fd);
        break;
      default:
        return -EINVAL;
    }
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

}  // namespace kaio::runtime
