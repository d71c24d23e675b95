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
#include "core/request.h"
#include "core/kernel_errors.h"
#include "runtime/engine_internal.h"
#include "runtime/stream_lanes.h"

namespace kaio::runtime {



using core::SubmitErrorClass;
using core::ClassifySubmitError;

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
      kernel_efd_(kernel_efd, MakeEventfd),
      submit_queue_(sys, submit_efd),
      fd_kind_(new std::atomic<uint8_t>[kFdKinds]()),
      fd_order_(new FdOrderState[kFdKinds]()),
      kernel_(sys, slots_, static_cast<size_t>(options.submit_batch), static_cast<size_t>(options.reap_batch)),
      reaper_token_(submit_queue_.NewProducerToken()),
      device_chunk_(static_cast<size_t>(std::clamp(options.device_submit_chunk, 1, options.submit_batch))),
      submit_meta_(static_cast<size_t>(options.submit_batch)),
      inline_batch_(static_cast<size_t>(options.submit_batch)),
      last_kernel_activity_(absl::Now()),
      lanes_(std::make_unique<StreamLanes>(*this)) {
  learn_.reserve(static_cast<size_t>(options.submit_batch));  // filled per inline batch, never grown
}

Engine::~Engine() {
  Shutdown();
  // seq_cst (a release would do): the flag publishes nothing; each thread loads it (acquire) once the
  // wake-ups below reach it.
  exiting_.store(true, std::memory_order_seq_cst);
  submit_queue_.Wake();
  if (submitter_.joinable()) submitter_.join();
  // The reaper leaves once in_kernel_ is 0, and only the submitter still changes it: a request
  // io_submit refused (EBADF) is delivered first and uncounted after, so Shutdown() can return in
  // between. So the reaper's last wake-up comes after the submitter is joined: woken before, it could
  // see the stale count and go back to its wait, and the join below would wait out its idle
  // timeout (kIdleLookMs).
  sys_.EventFdWrite(kernel_efd_.get(), 1);
  if (reaper_.joinable()) reaper_.join();
  pool_.Stop();
  lanes_.reset();  // after the pool, which tells the lanes when it finishes one of theirs
  context_.Release();  // its only other user, the submitter, is joined
}

// ---------------------------------------------------------------- producers

uint32_t Engine::Claim(core::CompletionSink& sink, uint64_t tag) {
  uint32_t index = slots_.Acquire();
  if (index == kNoSlot) return kNoSlot;
  core::Slot& slot = slots_.at(index);
  core::MarkClaimed(slot);  // ours alone (Acquire took it off the free stack) until Enqueue publishes it
  slot.io = core::IoRequest{};
  slot.flags = 0;
  slot.file_flags = -1;  // not looked at (Describe stores the client's look, if it made one)
  // relaxed, through atomic_ref: a Cancel holding a stale ticket may read it at any time (and
  // finds the generation changed); every write of `partial` is atomic for that reason.
  std::atomic_ref<uint64_t>(slot.partial).store(0, std::memory_order_relaxed);
  slot.tag = tag;
  // relaxed, both: published with the request by the release that publishes the request (core::Publish).
  slot.result.store(0, std::memory_order_relaxed);
  slot.sink.store(&sink, std::memory_order_relaxed);
  slot.mailbox_next = 0;
  // slot.client is left as it is: the client's, read by its scans across reuse (core::ClientRecord).
  return index;
}

void Engine::Unclaim(uint32_t index) {
  // relaxed: a claimed slot is ours alone, so the word is the one Claim stored; Free's CAS checks it.
  slots_.Free(index, core::LookOwn(slots_.at(index)));
}

Engine::Delivered Engine::TakeDelivered(uint32_t index) const {
  const core::Slot& slot = slots_.at(index);
  // acquire, though here it pairs with no other thread: Deliver runs on the thread whose CAS
  // (Complete) moved the slot into kCompleted after storing the result, and nobody else moves a
  // completed slot of a self-freeing sink until it calls FreeDelivered, so this reads that thread's
  // own write. What the request's earlier hops did reached this thread through the engine's acquires.
  const uint64_t word = core::Look(slot);
  // relaxed: stored by this thread before its CAS into kCompleted; atomic only for readers of
  // stale tickets.
  return Delivered{slot.result.load(std::memory_order_relaxed), WordGeneration(word)};
}

void Engine::FreeDelivered(uint32_t index, uint32_t generation) {
  slots_.Free(index, core::PackWord(generation, SlotState::kCompleted));
}

bool Engine::QueueAndAnnounce(ProducerToken& token, uint32_t index, bool* submitter_sleeps) {
  core::Slot& slot = slots_.at(index);
  // relaxed: a claimed slot is ours alone, so the word is the one Claim stored.
  uint64_t word = core::LookOwn(slot);
  core::Publish(slot, word, SlotState::kQueued);  // the submitter (or a canceller) sees the described request
  if (!submit_queue_.Push(token, index)) {
    // moodycamel fails only when it cannot allocate a block: complete the request with ENOMEM
    // rather than lose it.
    Complete(index, SlotState::kQueued, -ENOMEM);
    return false;
  }
  *submitter_sleeps = submit_queue_.Announce();
  return true;
}

bool Engine::WriteSkipsTheKernel(uint32_t index) {
  core::Slot& slot = slots_.at(index);
  const core::IoOp op = slot.io.op;
  if (options_.fallback_threads == 0 ||
      (slot.flags & core::kSlotForceKernel) || !write_refusals_.SkipKernel(slot.io.fd)) {
    return false;
  }
  // Only a write whose order does not matter (a regular file without O_APPEND) may skip the submit
  // queue: an O_APPEND or stream write sent straight to the pool would overtake this fd's earlier
  // writes still in the queue (the one in 256 offered to the kernel again, say: 421 of 700 appends
  // landed out of order). The look is handed on, so EnqueueToPool does not look again.
  KindCache kind{slot.io.fd, StreamLanes::Classify(slot.io.fd, slot.file_flags)};
  if (StreamLanes::OrderFor(kind.kind, op) != StreamLanes::Order::kFree) return false;
  if (kind.kind == StreamLanes::Kind::kFile) slot.flags |= core::kSlotFileWrite;
  EnqueueToPool(index, &kind);
  return true;
}

void Engine::EnqueueToPool(uint32_t index, KindCache* looked) {
  core::Slot& slot = slots_.at(index);
  // relaxed: a claimed slot is ours alone, so the word is the one Claim stored.
  uint64_t word = core::LookOwn(slot);
  // A negative offset is the pool's pread's EINVAL; only the lanes would ignore it. No lone request
  // skips the look here: this runs outside the submit role, concurrently with other dispatches of
  // the fd, and what the pool runs it cannot take back to a lane.
  const StreamLanes::Order order = IsReadOrWrite(slot.io.op) && slot.io.offset >= 0
                                       ? DispatchOrder(slot, /*lone_may_go=*/false, looked)
                                       : StreamLanes::Order::kFree;
  if (order != StreamLanes::Order::kFree) slot.flags |= core::kSlotStream;
  core::Publish(slot, word, SlotState::kPoolQueued);  // the worker, lane (or a canceller) sees the request
  if (order == StreamLanes::Order::kFree) {
    PoolPush(index);
  } else {
    PushToLane(index, order);
  }
}

void Engine::AcquireRole(std::atomic<bool>& role) {
  // acquire: pairs with ReleaseRole's release, so the new holder sees what the last one did under the role.
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
  // relaxed: a first look only; MarkCompleted's CAS below checks the word again and acquires it.
  uint64_t word = core::LookOwn(slot);
  if (WordState(word) != from) return false;
  // relaxed: MarkCompleted's CAS below publishes it. Stored before that CAS, so it relies on only the
  // holder of `from` completing (two completers racing from one state could overwrite each other's).
  slot.result.store(result, std::memory_order_relaxed);
  // Publishes the result, ordered before the sink's wake-up check (see core::MarkCompleted).
  if (!core::MarkCompleted(slot, word)) return false;
  // relaxed: statistics, read without ordering (Stats).
  counters_.completed.fetch_add(1, std::memory_order_relaxed);
  if (result == -ECANCELED) {
    counters_.cancelled.fetch_add(1, std::memory_order_relaxed);
  } else if (result < 0) {
    counters_.failed.fetch_add(1, std::memory_order_relaxed);
  }
  // Before the delivery: from it on the program may close the fd and reuse its number.
  if (slot.flags & core::kSlotCounted) Uncount(slot.io.fd, slot.io.op, slot.flags);
  // relaxed: Claim's store, published by the request's release and acquired by the CAS above.
  core::CompletionSink* sink = slot.sink.load(std::memory_order_relaxed);
  sink->Deliver(index);  // the slot may be freed by its owner from here on: do not touch it
  // seq_cst: after Deliver's add to delivered (seq_cst); Shutdown stores stopping_, then loads the counts
  // (under sinks_mu_): either it sees this delivery or we see the stop and notify under the mutex.
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
  // acquire: pairs with the release of the state's last writer, so the partial read below is the one it published.
  uint64_t word = core::Look(slot);
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
        // of running it: the holder's Move out of kQueued fails and it sees our state.
        if (core::MoveWeak(slot, word, SlotState::kCancelledQueued)) {
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
        // A context released since is seen only if the request left the kernel meanwhile
        // (in_kernel_ was 0): io_cancel then says EINVAL, as for one that runs on.
        const KernelAio::Context ctx = context_.Current();
        int64_t cancelled_result = 0;
        int rc = kernel_.Cancel(ctx, index, &cancelled_result);
        if (rc == 0) {
          // Old kernels hand the result back here instead of through the ring.
          Resignal(slot);
          if (Complete(index, SlotState::kInKernel, cancelled_result)) {
            // seq_cst: a decrement of in_kernel_, before OnRoomFreed's load of room_wanted_ (see engine.h).
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
        if (!rerouted && FdKindOf(slot.io.fd) != kFdAsync) {  // a device fd's request stays
          rerouted = true;
          // On a stream the kernel never queues a request: it finished inside io_submit, so it
          // leaves kInKernel as soon as whoever reaps it routes it. Wait for that, however long it
          // takes: a bounded wait said "not cancelled" when the reaper thread, holding the reap
          // role with this very event taken from the ring, was descheduled for 100 yields (TSan on
          // two loaded cores), and the read then waited in its lane for data that never came. On
          // any other fd the request may be on a device: a few yields, then its real result.
          const StreamLanes::Kind kind = StreamLanes::Classify(slot.io.fd);
          const bool completes_in_submit = kind == StreamLanes::Kind::kStream || kind == StreamLanes::Kind::kCharDevice;
          // The caller's signals are blocked meanwhile: reaping delivers completions, and a
          // handler that waited for one on this thread (aio_suspend) would wait for ever.
          sigset_t all_signals, caller_mask;
          sigfillset(&all_signals);
          pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
          for (int tries = 0; completes_in_submit || tries < 100; ++tries) {
            ReapInline();
            // acquire: pairs with the release of whichever hop moved it on (the routing just done).
            word = core::Look(slot);
            if (WordGeneration(word) != generation || WordState(word) != SlotState::kInKernel) break;
            // Past the first yields, sleep: the reaper may need this core to finish.
            if (tries < 100) {
              sched_yield();
            } else {
              absl::SleepFor(absl::Microseconds(50));
            }
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
        // acquire: pairs with the lanes' release back into kPoolQueued (or the completion), so the
        // kPoolQueued case reads the partial the attempt left.
        word = core::Look(slot);
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
  // acquire (any order would do: the owner unregisters on its own thread, with nothing outstanding);
  // relaxed for the sum: a statistic.
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
  // seq_cst: Shutdown's side of the accepting() handshake (see engine.h): stored before the counts are
  // loaded below.
  stopping_.store(true, std::memory_order_seq_cst);
  // An inline_io requester may have queued requests it has not flushed yet: the submitter takes them.
  // Announced like a producer's request, so a submitter on its way to sleep fails its CAS.
  submit_queue_.Announce();
  submit_queue_.WakeOnce();
  std::unique_lock<std::mutex> lock(sinks_mu_);
  drained_cv_.wait(lock, [this] {
    for (core::CompletionSink* sink : sinks_) {
      // seq_cst: after the store of stopping_ above; accepted pairs with the producers' count before
      // accepting(), delivered with Complete()'s add before its load of stopping_ (see there).
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
    // relaxed, all the loads here: statistics, read without ordering; the snapshot need not be
    // consistent (in_flight is clamped at 0).
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
  s.contexts_created = context_.created();
  s.contexts_released = context_.released();
  s.pool_threads = pool_.threads_started();
  s.pool_running = counters_.pool_running.load(std::memory_order_relaxed);
  s.queue_block_allocations = QueueTraits::allocations.load(std::memory_order_relaxed);
  s.inline_submitted = counters_.inline_submitted.load(std::memory_order_relaxed);
  s.inline_reaped = counters_.inline_reaped.load(std::memory_order_relaxed);
  s.read_now = counters_.read_now.load(std::memory_order_relaxed);
  return s;
}

}  // namespace kaio::runtime
