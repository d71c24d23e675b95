// Engine, inline I/O: a requester's own thread submits and reaps (RequesterOptions::inline_io),
// learning which fds complete inside io_submit; the roles shared with the service threads.
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
#include "runtime/engine_internal.h"
#include "runtime/stream_lanes.h"

namespace kaio::runtime {

using core::SubmitErrorClass;
using core::ClassifySubmitError;

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
  // acquire: taking the submit role (pairs with ReleaseRole's release).
  if (submit_role_.exchange(true, std::memory_order_acquire)) {
    WakeSubmitterOnce();
    return;
  }
  // relaxed for context_: it is written only under the submit role, which we hold now; exiting_:
  // acquire, pairs with ~Engine's store.
  if (context_.load(std::memory_order_relaxed) == 0 || exiting_.load(std::memory_order_acquire) ||
      options_.fallback_threads == 0) {
    // Creating the io context (or the pool fallback when it cannot be) is the submitter's job.
    ReleaseRole(submit_role_);
    WakeSubmitterOnce();
    return;
  }
  bool handed_over = false;
  while (true) {
    // acquire (any order would do): we hold the submit role, the only adder, so a stale count errs high.
    int64_t room = options_.queue_depth - in_kernel_.load(std::memory_order_acquire);
    size_t want = static_cast<size_t>(std::clamp<int64_t>(room, 0, options_.submit_batch));
    if (want == 0) {
      handed_over = true;  // the kernel queue is full: the submitter waits for room, we do not
      break;
    }
    size_t count = queue_.try_dequeue_bulk_from_producer(token, inline_batch_.data(), want);
    if (count == 0) break;
    // relaxed: a statistic.
    counters_.inline_submitted.fetch_add(count, std::memory_order_relaxed);
    learn_.clear();
    const bool requeued = SubmitBatch(inline_batch_.data(), count, &token);
    // Requests the kernel finished inside io_submit (page-cache hits) are in the ring now: reap
    // them here, and learn from what is still running which fds need the eventfd.
    // (Only when no one else is halfway through a reap: a request it has taken from the ring but
    // not yet routed still looks as if it were running, and async is a verdict for good.)
    // A batch whose fds are all known to be async has nothing to learn and nothing finished here:
    // the reaper, woken by their eventfd, routes them. Taking the reap role anyway would make it wait
    // for us (spin, yield, sleep: 2 extra context switches per such inline submission).
    const bool worth_reaping = std::any_of(learn_.begin(), learn_.end(),
                                           [this](const Submitted& sub) { return FdKindOf(sub.fd) != kFdAsync; });
    bool settled = worth_reaping;
    // seq_cst (any order would do): a count read after our own add, so a stale value errs high and
    // costs one look at the ring.
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
  // relaxed: a hint; a stale 0 leaves the reaping to the reaper thread (woken by the eventfd, or
  // watching unsignalled requests every millisecond).
  if (in_kernel_.load(std::memory_order_relaxed) == 0) return;
  // If the reap role is taken, its holder reaps until the ring is empty, and the reaper thread
  // (woken by the kernel's eventfd for anything that arrives later) waits for the role.
  // acquire: taking the reap role (pairs with ReleaseRole's release), so reap_events_ and
  // getevents_failing_ pass from holder to holder.
  if (reap_role_.exchange(true, std::memory_order_acquire)) return;
  ReapAvailable(/*inline_caller=*/true);
  ReleaseRole(reap_role_);
}

bool Engine::TakeReapRoleToLearn(const Submitted* batch, size_t count) {
  // acquire: taking the reap role, as in ReapInline.
  if (!reap_role_.exchange(true, std::memory_order_acquire)) return true;
  // Taken: usually by the reaper thread, woken by the eventfd of these very requests while we were
  // still in io_submit, and routing them now. If an fd of this batch is still unknown, wait for it
  // a little: otherwise, when routing is slow (a loaded machine, TSan), we might never learn.
  const bool unknown =
      std::any_of(batch, batch + count, [this](const Submitted& sub) { return FdKindOf(sub.fd) == kFdUnknown; });
  if (!unknown) return false;
  const int64_t give_up = MonotonicNs() + 200 * 1000;
  while (MonotonicNs() < give_up) {
    __builtin_ia32_pause();
    // A relaxed load first (a spin that only reads keeps the line shared), then the acquire exchange
    // that takes the role.
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
    // acquire: pairs with the release of the hop that moved it since (only its state and generation
    // are read here, no data of the slot).
    const uint64_t word = slots_.at(batch[i].index).word.load(std::memory_order_acquire);
    const SlotState state = WordGeneration(word) == batch[i].generation ? WordState(word) : SlotState::kCompleted;
    // relaxed, both: a hint (see FdKindOf). The CAS leaves only kFdUnknown, so a kFdAsync once stored
    // stays, whichever order two learners run in.
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
  // seq_cst: the count of the unsignalled_ / reaper_watching_ handshake (engine.h); once it reaches 0
  // the reaper stops watching.
  unsignalled_.fetch_sub(1, std::memory_order_seq_cst);
}

}  // namespace kaio::runtime
