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
#include "core/request.h"
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
  if (WriteGoesStraightToPool(index)) return false;
  // The same add as Enqueue: a submitter on its way to sleep sees it and drains again. Only the
  // wake-up is left to the caller's SubmitInline.
  bool submitter_sleeps = false;
  if (!QueueAndAnnounce(token, index, &submitter_sleeps) || !submitter_sleeps) return false;
  // Shutdown() sets stopping_ and then Announces (both seq_cst): if it kicked the submitter
  // before our add, we see stopping_ here, and wake it ourselves rather than wait for a flush.
  if (stopping_.load(std::memory_order_seq_cst)) {
    submit_queue_.WakeOnce();
    return false;
  }
  return true;
}

void Engine::SubmitInline(ProducerToken& token, int owner_reap_fd) {
  // The submit role is taken by the submitter thread (then it is awake and drains everything) or
  // by another inline caller (which drains only its own token's requests): either way, ours need
  // the submitter thread, so wake it if it sleeps.
  // acquire: taking the submit role (pairs with ReleaseRole's release).
  if (submit_role_.exchange(true, std::memory_order_acquire)) {
    submit_queue_.WakeOnce();
    return;
  }
  // owned(): we hold the submit role now; exiting_: acquire, pairs with ~Engine's store.
  if (context_.owned() == 0 || exiting_.load(std::memory_order_acquire) ||
      options_.fallback_threads == 0) {
    // Creating the io context (or the pool fallback when it cannot be) is the submitter's job.
    ReleaseRole(submit_role_);
    submit_queue_.WakeOnce();
    return;
  }
  bool handed_over = false;
  while (true) {
    // acquire (any order would do): we hold the submit role, the only adder, so a stale count errs high.
    int64_t room = options_.queue_depth - in_kernel_.load(std::memory_order_acquire);
    size_t want = static_cast<size_t>(std::clamp<int64_t>(room, 0, options_.submit_batch));
    if (want == 0) {
      // The kernel queue is full: the submitter waits for room, we do not. But only if something is
      // left: a requester that reaps its own completions (owner_reap_fd) submits exactly as many as
      // it reaped, so its drain fills the room to the last place every time, and a hand-over then
      // woke the submitter for nothing, which, awake, took the next requests too (kaio_bench O_DIRECT
      // qd128 at queue_depth 128: 45% of requests through the submitter, 2.2 us CPU per read
      // against 1.4).
      handed_over = submit_queue_.MayHoldWork();
      break;
    }
    size_t count = submit_queue_.DrainFrom(token, inline_batch_.data(), want);
    if (count == 0) break;
    // relaxed: a statistic.
    counters_.inline_submitted.fetch_add(count, std::memory_order_relaxed);
    learn_.clear();
    const bool requeued = SubmitBatch(inline_batch_.data(), count, &token, owner_reap_fd);
    // Requests the kernel finished inside io_submit (page-cache hits) are in the ring now: reap
    // them here, and learn from what is still running which fds need the eventfd.
    // (Only when no one else is halfway through a reap: a request it has taken from the ring but
    // not yet routed still looks as if it were running, and async is a verdict for good.)
    // A batch whose fds are all known to be async has nothing to learn and nothing finished here:
    // the reaper, woken by their eventfd, routes them. Taking the reap role anyway would make it wait
    // for us (spin, yield, sleep: 2 extra context switches per such inline submission).
    const bool worth_reaping = std::any_of(learn_.begin(), learn_.end(),
                                           [this](const Submitted& sub) { return FdKindOf(sub.fd) != kFdAsync; });
    // Learned under the reap role, always: a reaper counts a batch out of in_kernel_ before it routes
    // it (RouteEvents), so neither a count of 0 nor a released role means our requests have left
    // kInKernel. Learning after the release, or without the role when the count said 0, let a
    // reaper's millisecond look catch our page-cache reads taken from the ring but not yet routed,
    // and made the file async for good: kaio_bench page-cache qd32 in 2 runs of 5 after the reaper
    // began to linger in its watch (io_submit calls of 4, 0.92x).
    if (worth_reaping && TakeReapRoleToLearn(learn_.data(), learn_.size())) {
      ReapAvailable(/*inline_caller=*/true);
      LearnFdKinds(learn_.data(), learn_.size());
      ReleaseRole(reap_role_);
    }
    EnsureUnsignalledWatched();
    if (requeued) break;  // the kernel queue is full: the rest is the submitter's now
    if (count < want) break;
  }
  ReleaseRole(submit_role_);
  if (handed_over) submit_queue_.WakeOnce();
}

int64_t Engine::ReadOnCaller(int fd, void* buf, uint64_t nbytes, int64_t offset) {
  // kFdCompletesInline only: kFdInlineNoPread is a stream (ESPIPE), whose reads keep their order
  // in a lane. Without the pool nothing is sent with RWF_NOWAIT, so nothing is learned either.
  if (nbytes == 0 || offset < 0 || options_.fallback_threads == 0 || KindForReadHere(fd) != kFdCompletesInline) {
    return -1;
  }
  struct iovec one = {buf, static_cast<size_t>(nbytes)};
  const int64_t result = PreadHere(fd, &one, 1, offset);
  if (result < 0 || static_cast<uint64_t>(result) != nbytes) return -1;
  // relaxed: a statistic.
  counters_.read_now.fetch_add(1, std::memory_order_relaxed);
  return result;
}

int64_t Engine::PreadHere(int fd, const struct iovec* iov, int iovcnt, int64_t offset) {
  const int64_t start = MonotonicNs();
  const int64_t result = sys_.Preadv2(fd, iov, iovcnt, offset, RWF_NOWAIT);
  // An O_DIRECT read waits for the device here, RWF_NOWAIT or not. The fd's kind says its requests
  // completed inside io_submit, which an O_DIRECT one never does, but the program may have put an
  // O_DIRECT file on the number since. Looking (F_GETFL) before every read cost 12% of page-cache
  // reads at iodepth 1; a read that took long is looked at after, and an O_DIRECT fd is then
  // async: one read per reuse of a number may wait for the device, no more.
  if (MonotonicNs() - start > kReadNowSlowNs) {
    const int fl = fcntl(fd, F_GETFL);
    // relaxed: a hint, as every fd_kind_ access.
    if (fl >= 0 && (fl & O_DIRECT)) fd_kind_[fd].store(kFdAsync, std::memory_order_relaxed);
  }
  if (result == -ESPIPE) {
    // A stream (its reads complete inside io_submit too): not tried here again. relaxed: a hint,
    // as every fd_kind_ access; the CAS leaves a kFdAsync stored meanwhile as it is.
    uint8_t inline_kind = kFdCompletesInline;
    fd_kind_[fd].compare_exchange_strong(inline_kind, kFdInlineNoPread, std::memory_order_relaxed);
  }
  return result;
}

int Engine::KindForReadHere(int fd) {
  const int kind = FdKindOf(fd);
  if (kind == kFdUnknown) {
    // Never seen through io_submit (the submitter thread learns nothing there): one look. An
    // O_DIRECT fd is async; any other completes inside io_submit under RWF_NOWAIT (a cached page,
    // or a refusal), as LearnFdKinds would find. relaxed, both: a hint, as every fd_kind_ access;
    // the CAS leaves a verdict stored meanwhile as it is.
    const int fl = fcntl(fd, F_GETFL);
    if (fl < 0) return kind;
    uint8_t unknown = kFdUnknown;
    const uint8_t seen = (fl & O_DIRECT) ? kFdAsync : kFdCompletesInline;
    if (!fd_kind_[fd].compare_exchange_strong(unknown, seen, std::memory_order_relaxed)) return unknown;
    return seen;
  }
  if (kind != kFdAsync) return kind;
  // Async is a verdict for as long as the number holds its file, but kaio does not see close(2): a
  // buffered file opened on a number an O_DIRECT one had would never take the page-cache paths.
  // So every 256th look (per thread) at an async fd looks at the file again: a regular file without
  // O_DIRECT is unknown again, and learned anew (the next look here, or an inline batch).
  thread_local uint32_t async_looks = 0;
  if ((++async_looks & 255) != 0) return kind;
  const int fl = fcntl(fd, F_GETFL);
  struct stat st;
  if (fl < 0 || (fl & O_DIRECT) || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return kind;
  // relaxed: a hint, as every fd_kind_ access.
  uint8_t async = kFdAsync;
  fd_kind_[fd].compare_exchange_strong(async, kFdUnknown, std::memory_order_relaxed);
  return kFdUnknown;
}

bool Engine::ReadNow(uint32_t index, uint64_t& word) {
  core::Slot& slot = slots_.at(index);
  const core::IoOp op = slot.io.op;
  if (!core::IsRead(op)) return false;
  const int fd = slot.io.fd;
  if (KindForReadHere(fd) != kFdCompletesInline) return false;
  // Not an empty read: preadv2 of no bytes says 0 without looking at the file, where pread and
  // kernel AIO say EISDIR for a directory (the differential test's finding).
  const uint64_t wanted = core::RequestBytes(slot.io);
  if (wanted == 0) return false;
  // kStreamTrying, as a lane's non-blocking attempt: a canceller waits the microsecond for its
  // outcome (completed: all done; back to kQueued or the pool: cancelled), so its answer does not
  // depend on the moment. (kPoolRunning made it "not cancelled" for that moment, and a pipe read that
  // was then to wait in its lane ran on uncancelled: KaioLimits.TooManyRequestsIsEAGAIN under TSan.)
  // If cancelled already, the caller's own Move out of kQueued fails the same way and completes it:
  // so the CAS works on a copy, and `word` stays the kQueued word the caller's Move expects (a
  // reloaded word would let that Move take the request out of kCancelledQueued: the stress run's
  // "Cancel said kCanceled, yet the request delivered another result").
  uint64_t expected = word;
  if (!core::Move(slot, expected, SlotState::kStreamTrying)) return false;
  struct iovec one = {slot.io.buf, static_cast<size_t>(slot.io.nbytes)};
  const bool vectored = op == core::IoOp::kReadv;
  const int64_t result = PreadHere(fd, vectored ? static_cast<const struct iovec*>(slot.io.buf) : &one,
                                   vectored ? static_cast<int>(slot.io.nbytes) : 1, slot.io.offset);
  if (result >= 0 && static_cast<uint64_t>(result) == wanted) {
    // relaxed: a statistic.
    counters_.read_now.fetch_add(1, std::memory_order_relaxed);
    Complete(index, SlotState::kStreamTrying, result);
    return true;
  }
  if (result == -EAGAIN || result == -EOPNOTSUPP) {
    // Not (all) in the page cache, or a file that cannot say: the pool reads it, as after the
    // kernel's refusal of the same RWF_NOWAIT read (RouteKernelResult). Not counted in
    // nowait_retries: it never reached kernel_submitted, so it counts as a pool request only.
    slot.io.nowait = false;
    slot.flags &= ~core::kSlotNowait;
    core::Publish(slot, word, SlotState::kPoolQueued);
    PoolPush(index);
    return true;
  }
  // A short read (end of file, or the cached prefix of the range) or an error: the usual way gives
  // the answer it always gave (reading the range again: the bytes read here are the file's).
  core::Publish(slot, word, SlotState::kQueued);
  return false;
}

void Engine::ReapInline() {
  // relaxed: a hint; a stale 0 leaves the reaping to the reaper thread (woken by the eventfd, or
  // watching unsignalled requests every millisecond).
  if (in_kernel_.load(std::memory_order_relaxed) == 0) return;
  // If the reap role is taken, its holder reaps until the ring is empty, and the reaper thread
  // (woken by the kernel's eventfd for anything that arrives later) waits for the role.
  // acquire: taking the reap role (pairs with ReleaseRole's release), so KernelAio's reap buffers
  // and getevents_failing_ pass from holder to holder.
  if (reap_role_.exchange(true, std::memory_order_acquire)) return;
  ReapAvailable(/*inline_caller=*/true);
  ReleaseRole(reap_role_);
}

void Engine::ReapInlineWaiting() {
  // relaxed: a hint. Our own requests were counted by this thread, so a 0 means a reaper has taken
  // them from the ring already (RouteEvents counts down before routing): it delivers them.
  if (in_kernel_.load(std::memory_order_relaxed) == 0) return;
  AcquireRole(reap_role_);
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
    // relaxed: a hint, as every fd_kind_ access. Async is final (nothing to learn); a kind known
    // already is not written again: a failing CAS is a locked instruction all the same, and it was
    // one per page-cache read.
    const uint8_t known = fd_kind_[fd].load(std::memory_order_relaxed);
    if (known == kFdAsync) continue;
    // Only the slot word is read: a slot freed since (another generation) held a request that
    // completed, whoever has the slot now.
    // acquire: pairs with the release of the hop that moved it since (only its state and generation
    // are read here, no data of the slot).
    const uint64_t word = core::Look(slots_.at(batch[i].index));
    const SlotState state = WordGeneration(word) == batch[i].generation ? WordState(word) : SlotState::kCompleted;
    // relaxed, both: a hint (see FdKindOf). The CAS leaves only kFdUnknown, so a kFdAsync once stored
    // stays, whichever order two learners run in.
    if (state == SlotState::kInKernel) {
      fd_kind_[fd].store(kFdAsync, std::memory_order_relaxed);
    } else if (known == kFdUnknown && (state == SlotState::kCompleted || state == SlotState::kPoolQueued ||
                                       state == SlotState::kPoolRunning)) {
      uint8_t unknown = kFdUnknown;
      fd_kind_[fd].compare_exchange_strong(unknown, kFdCompletesInline, std::memory_order_relaxed);
    }
  }
}

void Engine::EnsureUnsignalledWatched() {
  // seq_cst, with WatchUnsignalled's store of reaper_watching_ and its re-check of unsignalled_:
  // either the reaper sees our requests or we see that it is not watching and wake it.
  if (unsignalled_.load(std::memory_order_seq_cst) > 0 && !reaper_watching_.load(std::memory_order_seq_cst)) {
    // relaxed: the eventfd write orders nothing for it, and a missed flag costs only one more wake-up:
    // it tells the woken reaper to watch even if it finds the count at 0 by then (it may have
    // reaped these requests itself on waking, and would not watch the next ones).
    watch_wanted_.store(true, std::memory_order_relaxed);
    sys_.EventFdWrite(kernel_efd_.get(), 1);
  }
}

void Engine::Resignal(core::Slot& slot) {
  if (!ResignalUncounted(slot)) return;
  // seq_cst: the count of the unsignalled_ / reaper_watching_ handshake (engine.h); once it reaches 0
  // the reaper stops watching.
  unsignalled_.fetch_sub(1, std::memory_order_seq_cst);
}

bool Engine::ResignalUncounted(core::Slot& slot) {
  if (!(slot.flags & core::kSlotUnsignalled)) return false;
  slot.flags &= ~core::kSlotUnsignalled;
  kernel_.Resignal(slot, kernel_efd_.get());
  return true;
}

}  // namespace kaio::runtime
