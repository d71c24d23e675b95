// Engine, the submitter hop: drains the submit queue, owns the io context (set up, idle release),
// and calls io_submit in batches; refusals go to the pool or a lane.
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

#include "core/kernel_errors.h"
#include "core/planted_bug.h"
#include "core/request.h"
#include "runtime/engine_internal.h"
#include "runtime/stream_lanes.h"

namespace kaio::runtime {

using core::SubmitErrorClass;
using core::ClassifySubmitError;

// ---------------------------------------------------------------- submitter

void Engine::SubmitterLoop() {
  std::vector<uint32_t> batch(static_cast<size_t>(options_.submit_batch));
  std::unique_ptr<SubmitQueue::ConsumerToken> consumer = submit_queue_.NewConsumerToken();
  while (true) {
    uint64_t seq = submit_queue_.Sequence();  // before the drain: see SubmitQueue::TrySleep
    AcquireRole(submit_role_);
    // acquire (any order would do): only the submit role's holder adds to in_kernel_, so a stale value
    // errs high and room is never overestimated; running out of room goes through the seq_cst handshake.
    int64_t room = options_.queue_depth - in_kernel_.load(std::memory_order_acquire);
    size_t want = static_cast<size_t>(std::clamp<int64_t>(room, 0, options_.submit_batch));
    size_t count = want == 0 ? 0 : submit_queue_.Drain(*consumer, batch.data(), want);
    if (count > 0) {
      SubmitBatch(batch.data(), count, nullptr);
      ReleaseRole(submit_role_);
      continue;
    }
    // acquire: pairs with ~Engine's store; the flag is all it carries.
    if (exiting_.load(std::memory_order_acquire)) {
      ReleaseRole(submit_role_);
      break;
    }
    absl::Time now = absl::Now();
    MaybeReleaseContext(now);
    absl::Time deadline = absl::InfiniteFuture();
    if (context_.owned() != 0) {  // ours until the release below
      deadline = std::max(last_kernel_activity_ + options_.idle_release, now + absl::Milliseconds(1));
    }
    ReleaseRole(submit_role_);
    // Sleep, unless a producer added work since `seq` (then we drain again).
    if (!submit_queue_.TrySleep(seq)) continue;
    if (want == 0) {
      // Sleeping for room: ask the reaper to wake us. seq_cst on the flag and on in_kernel_, here
      // and after every decrement (OnRoomFreed), so either we see the decrement or it sees the flag.
      room_wanted_.store(true, std::memory_order_seq_cst);
      if (in_kernel_.load(std::memory_order_seq_cst) < options_.queue_depth) {
        // Take the flag and the sleep bit back. relaxed for the flag: it publishes nothing, and a reaper that
        // saw it set meanwhile only wakes us once for nothing.
        room_wanted_.store(false, std::memory_order_relaxed);
        submit_queue_.EndSleep();  // the reaper freed room meanwhile
        continue;
      }
    }
    submit_queue_.WaitForWork(deadline);
    submit_queue_.EndSleep();
  }
}

void Engine::MaybeReleaseContext(absl::Time now) {
  if (context_.owned() == 0 || now - last_kernel_activity_ < options_.idle_release) return;
  // Only the submit role's holder (us, now) adds to in_kernel_, so once it reads 0 here it stays 0. The reaper sets
  // reaping_ before it reads in_kernel_ and calls io_getevents (which reads the ring in user space:
  // a released context would be unmapped memory); seq_cst on both sides means one of us sees the
  // other.
  if (in_kernel_.load(std::memory_order_seq_cst) != 0 || reaping_.load(std::memory_order_seq_cst)) return;
  context_.Release();
}

bool Engine::SubmitBatch(uint32_t* batch, size_t count, ProducerToken* requeue, int owner_reap_fd) {
  kernel_.StartBatch();
  size_t kernel_count = 0;
  int64_t unsignalled_count = 0;
  bool goes_to_device = false;
  bool have_context = context_.Ensure();
  // Which requests need their call order kept (streams, O_APPEND writes): see DispatchOrder. A lone
  // request goes the usual way only if the kernel can refuse what would block (RWF_NOWAIT: a pool
  // to take the refusal, and a context).
  const bool lone_may_go = kLoneRequestsSkipTheLook && have_context && options_.fallback_threads > 0;
  KindCache kind_cache;
  for (size_t i = 0; i < count; ++i) {
    uint32_t index = batch[i];
    core::Slot& slot = slots_.at(index);
    // acquire: pairs with the producer's release into kQueued (or a canceller's CAS).
    uint64_t word = core::Look(slot);
    if (WordState(word) == SlotState::kCancelledQueued) {
      Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      continue;
    }
    if (IsReadOrWrite(slot.io.op) && slot.io.offset < 0) {
      // As pread/pwrite (and glibc's aio_read/aio_write, which call them): EINVAL before anything
      // else is looked at, the fd included, and whatever kind of file it is (the stream lanes
      // ignore offsets). The C++ API refuses a negative offset at submission already.
      if (!Complete(index, SlotState::kQueued, -EINVAL)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      continue;
    }
    if (IsReadOrWrite(slot.io.op)) {
      const StreamLanes::Order classified = DispatchOrder(slot, lone_may_go, &kind_cache);
      if (classified != StreamLanes::Order::kFree) {
        slot.flags |= core::kSlotStream;  // before the release below, for Cancel and the pool
        if (core::Move(slot, word, SlotState::kPoolQueued)) {
          PushToLane(index, classified);
        } else {
          Complete(index, SlotState::kCancelledQueued, -ECANCELED);
        }
        continue;
      }
    }
    if (!have_context || (slot.flags & core::kSlotForcePool)) {
      if (core::Move(slot, word, SlotState::kPoolQueued)) {
        PoolPush(index);
      } else {
        Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      }
      continue;
    }
    if (IsReadOrWrite(slot.io.op) && !(slot.flags & core::kSlotForceKernel) &&
        options_.fallback_threads > 0) {
      // Ask the kernel to refuse (EAGAIN) rather than block us; refusals go to the pool.
      slot.io.nowait = true;
      slot.flags |= core::kSlotNowait;
    }
    // A lone page-cache read: a preadv2 costs less than io_submit and io_getevents, and on the
    // submitter thread it also spares the reaper's wake-up (page-cache reads at iodepth 1: see
    // BENCHMARKS.md). A batch of more goes to io_submit, one call for all of them.
    if (count == 1 && (slot.flags & core::kSlotNowait) && ReadNow(index, word)) continue;
    // An inline caller reaps right after io_submit: for an fd whose requests finish inside it,
    // the eventfd would only wake the reaper for nothing (see fd_kind_).
    const bool completes_inline = FdCompletesInline(slot.io.fd);
    if (!completes_inline) goes_to_device = true;
    const bool unsignalled = requeue != nullptr && (slot.flags & core::kSlotNowait) && completes_inline;
    // The inline caller's own eventfd, if it gave one (SubmitInline): the reaper thread is not
    // woken for these, so they count as unsignalled for it (it still looks every millisecond).
    const bool owner_signalled = !unsignalled && owner_reap_fd >= 0 && slot.io.signal;
    if (unsignalled) {
      slot.io.signal = false;
      slot.flags |= core::kSlotUnsignalled;
    } else if (owner_signalled) {
      slot.flags |= core::kSlotUnsignalled;
    }
    if (IsWrite(slot.io.op) && core::PlantedBug(core::PlantedBugKind::kMisdirectedWrite)) slot.io.offset ^= 4096;
    // The kernel's form is written before the release into kInKernel, so a canceller that sees
    // the state finds it whole.
    kernel_.Add(index, owner_signalled ? owner_reap_fd : kernel_efd_.get());
    if (!core::Move(slot, word, SlotState::kInKernel)) {
      kernel_.DropLast();
      if (unsignalled || owner_signalled) {
        slot.io.signal = true;
        slot.flags &= ~core::kSlotUnsignalled;
      }
      Complete(index, SlotState::kCancelledQueued, -ECANCELED);  // cancelled just now
      continue;
    }
    if (unsignalled || owner_signalled) ++unsignalled_count;
    if (requeue != nullptr) {
      submit_meta_[kernel_count] = Submitted{index, WordGeneration(word), slot.io.fd, IsReadOrWrite(slot.io.op)};
    }
    ++kernel_count;
  }
  if (kernel_count == 0) return false;
  const KernelAio::Context ctx = context_.owned();  // we hold the submit role
  // Counted before io_submit: a completion can be reaped before io_submit returns. seq_cst (an RMW,
  // so a release): a reaper whose load of in_kernel_ sees this add also sees the context stored
  // before it; and it is the count of the reaping_ and room_wanted_ handshakes (see engine.h).
  in_kernel_.fetch_add(static_cast<int64_t>(kernel_count), std::memory_order_seq_cst);
  // seq_cst: the inline submitter's store in the unsignalled_ / reaper_watching_ handshake (engine.h).
  if (unsignalled_count > 0) unsignalled_.fetch_add(unsignalled_count, std::memory_order_seq_cst);
  last_kernel_activity_ = absl::Now();
  size_t done = 0;
  int eagain_streak = 0;
  while (done < kernel_count) {
    int64_t start = MonotonicNs();
    // A call's requests reach the device only when it returns (the block layer plugs them): split
    // a batch that goes to a device (see ServiceOptions::device_submit_chunk).
    size_t nr = kernel_count - done;
    if (goes_to_device) nr = std::min(nr, device_chunk_);
    int rc = kernel_.Submit(ctx, done, nr);
    int64_t took = MonotonicNs() - start;
    // relaxed: statistics; max_io_submit_ns has one writer at a time (the submit role), so load and store.
    counters_.io_submit_calls.fetch_add(1, std::memory_order_relaxed);
    if (took > counters_.max_io_submit_ns.load(std::memory_order_relaxed)) {
      counters_.max_io_submit_ns.store(took, std::memory_order_relaxed);  // single writer
    }
    if (rc > 0) {
      if (requeue != nullptr) {
        for (int i = 0; i < rc; ++i) learn_.push_back(submit_meta_[done + static_cast<size_t>(i)]);
      }
      // relaxed: a statistic, read without ordering.
      counters_.kernel_submitted.fetch_add(static_cast<uint64_t>(rc), std::memory_order_relaxed);
      done += static_cast<size_t>(rc);
      eagain_streak = 0;
      continue;
    }
    // EBADF or EINVAL for the completion eventfd, not the request: the program closed it or put
    // another file on its number. Replace it and send the rest again. (An inline caller's own
    // eventfd is not the engine's: RepairIfLost says true, and the rest go on the engine's, still
    // counted as unsignalled until they are reaped.)
    if (const int signal_fd = kernel_.BatchSignalFd(done);
        (rc == -EBADF || rc == -EINVAL) && signal_fd >= 0 && kernel_efd_.RepairIfLost(signal_fd)) {
      kernel_efd_replaced_.store(true, std::memory_order_relaxed);  // a hint for the reaper's timeout
      kernel_.RepointSignals(done, kernel_efd_.get());
      continue;
    }
    uint32_t index = kernel_.BatchIndex(done);
    core::Slot& slot = slots_.at(index);
    if (rc != -EINTR) Resignal(slot);  // the kernel did not take it (only EINTR retries it as it is)
    switch (ClassifySubmitError(rc == 0 ? -EAGAIN : rc, slot.flags & core::kSlotNowait)) {
      case SubmitErrorClass::kInterrupted:
        continue;
      case SubmitErrorClass::kRetryLater: {
        // relaxed: a statistic, read without ordering.
        counters_.io_submit_eagain.fetch_add(1, std::memory_order_relaxed);
        if (requeue != nullptr) {
          // An inline caller must not wait for room: the rest goes back to the queue (never
          // seen by the kernel, so still cancellable) for the submitter thread.
          for (size_t i = done; i < kernel_count; ++i) {
            uint32_t rest = kernel_.BatchIndex(i);
            core::Slot& s = slots_.at(rest);
            Resignal(s);
            // acquire: our own kInKernel word (the kernel refused it, nobody else moves it); the
            // Move below checks it again.
            uint64_t w = core::Look(s);
            if (core::Move(s, w, SlotState::kQueued)) {
              if (!submit_queue_.Push(*requeue, rest)) Complete(rest, SlotState::kQueued, -ENOMEM);
            } else {
              Complete(rest, SlotState::kInKernel, -EAGAIN);
            }
          }
          // seq_cst: decrements of in_kernel_, before OnRoomFreed's load of room_wanted_ (engine.h).
          in_kernel_.fetch_sub(static_cast<int64_t>(kernel_count - done), std::memory_order_seq_cst);
          OnRoomFreed();
          // Announced like a producer's requests, after the pushes above.
          submit_queue_.Announce();
          submit_queue_.WakeOnce();
          return true;
        }
        // The kernel's ring is full (other users of this context's share of aio-nr, or a fault).
        // Wait for the reaper to make room; if nothing of ours is in flight, the refusal is not
        // about our own queue, so after a while the rest goes to the blocking pool.
        // acquire (any order would do): a count, read as an estimate of what of ours is in the kernel.
        int64_t ours_in_kernel = in_kernel_.load(std::memory_order_acquire) - static_cast<int64_t>(kernel_count - done);
        if (ours_in_kernel <= 0 && ++eagain_streak > 100) {
          for (size_t i = done; i < kernel_count; ++i) {
            uint32_t rest = kernel_.BatchIndex(i);
            core::Slot& s = slots_.at(rest);
            Resignal(s);
            // acquire: our own kInKernel word (the kernel refused it, nobody else moves it); the
            // Move below checks it again.
            uint64_t w = core::Look(s);
            if (options_.fallback_threads > 0 &&
                core::Move(s, w, SlotState::kPoolQueued)) {
              PoolPush(rest);
            } else {
              Complete(rest, SlotState::kInKernel, -EAGAIN);
            }
          }
          // seq_cst: decrements of in_kernel_, before OnRoomFreed's load of room_wanted_ (engine.h).
          in_kernel_.fetch_sub(static_cast<int64_t>(kernel_count - done), std::memory_order_seq_cst);
          OnRoomFreed();
          return false;
        }
        // The sleep of SubmitterLoop: it fails if a producer announced work since.
        if (submit_queue_.TrySleep(submit_queue_.Sequence())) {
          // seq_cst: the room_wanted_ handshake (engine.h), but without its re-check of in_kernel_: a decrement
          // just before this store goes unseen, which the 1 ms bound on the wait makes harmless.
          room_wanted_.store(true, std::memory_order_seq_cst);
          submit_queue_.WaitForWork(absl::Now() + absl::Milliseconds(1));
          submit_queue_.EndSleep();
        }
        continue;
      }
      case SubmitErrorClass::kUnsupported: {
        // This fd cannot promise not to block: run it in the pool (or its lane, for a tty).
        // acquire: our own kInKernel word (the kernel refused it, nobody else moves it); the
        // Move below checks it again.
        uint64_t w = core::Look(slot);
        if (MoveToLane(index, w)) break;
        if (IsWrite(slot.io.op)) {
          // A filesystem without RWF_NOWAIT at all says so here, for every write (ext4 says it in
          // the completion of each buffered one: RouteKernelResult): the same two consequences.
          write_refusals_.Refused(slot.io.fd);
          MarkBufferedFileWrite(slot, fcntl(slot.io.fd, F_GETFL));
        }
        if (core::Move(slot, w, SlotState::kPoolQueued)) {
          PoolPush(index);
        }
        break;
      }
      case SubmitErrorClass::kFailRequest:
        // ESPIPE: as in RouteKernelResult (a lone socket request with an offset).
        // acquire: our own kInKernel word, as above; MoveToLane's Move checks it again.
        if (rc == -ESPIPE && MoveToLane(index, core::Look(slot))) break;
        Complete(index, SlotState::kInKernel, rc);
        break;
    }
    // seq_cst: decrements of in_kernel_, before OnRoomFreed's load of room_wanted_ (engine.h).
    in_kernel_.fetch_sub(1, std::memory_order_seq_cst);
    OnRoomFreed();
    ++done;
  }
  return false;
}

}  // namespace kaio::runtime
