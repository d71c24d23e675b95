// Engine, the reaper hop: waits on the completion eventfd, reaps the ring and routes each result
// (complete, continue a short one, or hand a refusal to the pool or a lane).
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

// ---------------------------------------------------------------- reaper

void Engine::ReaperLoop() {
  bool look_again_soon = false;
  while (true) {
    // seq_cst: the reaper's re-check in the unsignalled_ / reaper_watching_ handshake (engine.h), after
    // WatchUnsignalled's store of false.
    // relaxed, watch_wanted_: a hint (see EnsureUnsignalledWatched); the load before it is the handshake's.
    if (unsignalled_.load(std::memory_order_seq_cst) > 0 ||
        (watch_wanted_.load(std::memory_order_relaxed) && watch_wanted_.exchange(false, std::memory_order_relaxed))) {
      WatchUnsignalled();
    } else {
      // A failed io_getevents may have left events whose eventfd count is spent: look again soon.
      // After a replacement of the eventfd, requests sent before it announce themselves on the old
      // one: look every millisecond until nothing is in flight.
      int timeout_ms = look_again_soon ? 10 : core::kIdleLookMs;
      // relaxed: kernel_efd_replaced_ is a hint that only shortens the timeout; in_kernel_ is a count read
      // for the same purpose (seq_cst, though any order would do).
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
    // acquire, both: exiting_ pairs with ~Engine's store; in_kernel_ is only a count, which stays 0
    // once the submitter is joined (before the destructor's last wake-up).
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
    // relaxed: a hint for ReaperLoop's timeout.
    if (kernel_efd_.RepairIfLost(fd)) kernel_efd_replaced_.store(true, std::memory_order_relaxed);
  }
}

void Engine::WatchUnsignalled() {
  // seq_cst, with EnsureUnsignalledWatched's load: while it reads true, the caller leaves its requests
  // to us; the loop's loads (seq_cst) and ReaperLoop's re-check after the store of false see them.
  reaper_watching_.store(true, std::memory_order_seq_cst);
  // Lingers while requests are still being submitted, until kWatchLingerLooks looks in a row find
  // nothing unsignalled and nothing submitted since the last: a requester at iodepth 1 has nothing
  // unsignalled between a completion and its next request (most of the time, if its own work is
  // slow), and leaving then made its next request write the eventfd to start the watch again
  // (EnsureUnsignalledWatched): the wake-up per request that announcing to the requester saves.
  int quiet_looks = 0;
  // relaxed: a statistic, read as a hint of activity only.
  uint64_t submitted_seen = counters_.kernel_submitted.load(std::memory_order_relaxed);
  while (true) {
    const uint64_t submitted = counters_.kernel_submitted.load(std::memory_order_relaxed);
    // seq_cst: the count of the handshake, as below the loop.
    if (unsignalled_.load(std::memory_order_seq_cst) > 0 || submitted != submitted_seen) {
      quiet_looks = 0;
      submitted_seen = submitted;
    } else if (++quiet_looks > kWatchLingerLooks) {
      break;
    }
    // Requests without the eventfd flag announce nothing to us: look at the ring every millisecond
    // (or at once when a flagged one completes). Two kinds: a wrong guess about an fd (then async
    // for good, so rare), and requests that announce themselves to their waiting requester, which
    // reaps them itself (SubmitInline's owner_reap_fd): for those this look only serves whoever
    // else needs them, and costs a wake-up per millisecond, not one per reaped batch. The reap role
    // stays free meanwhile.
    WaitForCompletions(1);
    AcquireRole(reap_role_);
    ReapAvailable(/*inline_caller=*/false);
    ReleaseRole(reap_role_);
    // acquire, both: exiting_ pairs with ~Engine's store; in_kernel_ is only a count, which stays 0
    // once the submitter is joined (before the destructor's last wake-up).
    if (exiting_.load(std::memory_order_acquire) && in_kernel_.load(std::memory_order_acquire) == 0) break;
  }
  // seq_cst, with EnsureUnsignalledWatched: after this store the caller re-checks unsignalled_.
  reaper_watching_.store(false, std::memory_order_seq_cst);
}

bool Engine::ReapAvailable(bool inline_caller) {
  bool emptied = true;
  while (true) {
    // seq_cst, with the load of in_kernel_: the reaper's side of reaping_ vs in_kernel_ (engine.h): set
    // the flag, then look at the count; the context is touched only when the count is not 0.
    reaping_.store(true, std::memory_order_seq_cst);
    if (in_kernel_.load(std::memory_order_seq_cst) == 0) break;
    // Current()'s acquire pairs with Ensure's release (the in_kernel_ load above already orders it
    // after the add that counted these requests, made after the context was stored).
    const KernelAio::Context ctx = context_.Current();
    const KernelAio::Event* events = nullptr;
    int got = kernel_.Reap(ctx, &events);
    if (got == -EINTR) continue;
    if (got < 0) {
      if (!getevents_failing_) std::fprintf(stderr, "kaio: io_getevents failed: %s\n", std::strerror(-got));
      getevents_failing_ = true;  // one message per run of failures, not one per retry
      emptied = false;
      break;
    }
    getevents_failing_ = false;
    if (got == 0) break;
    RouteEvents(events, got, inline_caller);
    // No early exit on a short batch: io_getevents may return fewer events than are ready, and the
    // eventfd count that announced the rest is already consumed. Emptiness is the only exit (the
    // ring is read in user space, so the final empty look costs no syscall).
  }
  // seq_cst (a release would do): after our last look at the ring, so a submitter that loads false may
  // destroy the context.
  reaping_.store(false, std::memory_order_seq_cst);
  return emptied;
}

void Engine::RouteEvents(const KernelAio::Event* events, int got, bool inline_caller) {
  // Uncounted before they are routed: their ring entries are free once taken, and a requester that
  // sees its completion may submit again at once. Counted down after routing, a requester at
  // iodepth == queue_depth found no room for its next request and handed it to the submitter
  // thread (kaio_bench O_DIRECT qd128: 90% of requests through the submitter, twice the raw loop's
  // CPU). Routing runs with reaping_ set, so the context outlives it even if the count reaches 0.
  // seq_cst: a decrement of in_kernel_, before OnRoomFreed's load of room_wanted_ (engine.h).
  in_kernel_.fetch_sub(got, std::memory_order_seq_cst);
  OnRoomFreed();
  int64_t resignalled = 0;
  for (int i = 0; i < got; ++i) {
    if (core::PlantedBug(core::PlantedBugKind::kLostCompletion)) continue;
    RouteKernelResult(events[i].index, events[i].result, &resignalled);
  }
  // One read-modify-write per batch (a page-cache batch is all unsignalled: it was one per read).
  // Counted down after routing, the reaper may watch a moment longer than needed, never less.
  // seq_cst: the count of the unsignalled_ / reaper_watching_ handshake (engine.h).
  if (resignalled > 0) unsignalled_.fetch_sub(resignalled, std::memory_order_seq_cst);
  // relaxed: a statistic.
  if (inline_caller) counters_.inline_reaped.fetch_add(static_cast<uint64_t>(got), std::memory_order_relaxed);
}

void Engine::OnRoomFreed() {
  // The submitter may sleep waiting for room: wake it. Only then: a submitter that sleeps for
  // want of work is not woken by every reap (that would cost a needless wake-up, two context
  // switches, per reaped batch). Called after every decrement of in_kernel_ (seq_cst, see the
  // submitter's sleep).
  if (room_wanted_.load(std::memory_order_seq_cst) && room_wanted_.exchange(false, std::memory_order_seq_cst)) {
    // Announced like a producer's request, so a submitter on its way to sleep fails its CAS and
    // looks again.
    submit_queue_.Announce();
    submit_queue_.WakeOnce();
  }
}

void Engine::RouteKernelResult(uint32_t index, int64_t result, int64_t* resignalled) {
  core::Slot& slot = slots_.at(index);
  // acquire: the kernel hand-off is invisible to TSan and to the memory model; this pairs with the
  // submitter's release into kInKernel, so the request and flags it wrote are visible here.
  uint64_t word = core::Look(slot);
  // Whatever happens next (pool, another submission), it gets the eventfd back.
  if (ResignalUncounted(slot)) ++*resignalled;
  // A lone read or write on a socket with an offset: kernel AIO says ESPIPE, where pread's ESPIPE
  // makes glibc read; its lane ignores the offset.
  if (result == -ESPIPE && MoveToLane(index, word)) return;
  if ((slot.flags & core::kSlotNowait) && (result == -EAGAIN || result == -EOPNOTSUPP)) {
    // The kernel would have blocked: the request is not done, it needs a thread that may block,
    // or, on a stream, its lane (where it waits for readiness in no thread).
    // relaxed: a statistic.
    counters_.nowait_retries.fetch_add(1, std::memory_order_relaxed);
    slot.io.nowait = false;
    slot.flags &= ~core::kSlotNowait;
    // A filesystem that cannot write without blocking (ext4's buffered writes) says so for every
    // write: the next ones on this fd skip the kernel (see WriteRefusals).
    if (result == -EOPNOTSUPP && IsWrite(slot.io.op)) {
      write_refusals_.Refused(slot.io.fd);
    }
    if (MoveToLane(index, word)) return;
    int fl = fcntl(slot.io.fd, F_GETFL);
    if (result == -EAGAIN && fl >= 0 && (fl & O_DIRECT)) {
      // O_DIRECT refused for a moment (device queue full): back to the kernel, without NOWAIT.
      slot.flags |= core::kSlotForceKernel;
      if (core::Move(slot, word, SlotState::kQueued)) {
        if (!submit_queue_.Push(*reaper_token_, index)) {
          Complete(index, SlotState::kQueued, -ENOMEM);
          return;
        }
        // The reaper as a producer: announced after the push, as in QueueAndAnnounce.
        if (submit_queue_.Announce()) submit_queue_.WakeOnce();
      }
      return;
    }
    MarkBufferedFileWrite(slot, fl);
    if (core::Move(slot, word, SlotState::kPoolQueued)) {
      PoolPush(index);
    }
    return;
  }
  if ((slot.flags & core::kSlotNowait) && result > 0 && StoppedShort(slot.io, result)) {
    // The non-blocking attempt moved only part (a pipe's capacity, the cached prefix of a file): the
    // blocking call would have done it all, so the pool finishes the rest (a stream's lane, if it
    // is one: it skips `partial` bytes of plain and vectored requests alike). A vectored request
    // keeps the caller's iovec array untouched; the worker skips the first `partial` bytes of it.
    // relaxed, through atomic_ref: a Cancel may read it meanwhile (see Claim); the release that
    // hands the request on publishes it.
    std::atomic_ref<uint64_t>(slot.partial).store(slot.partial + static_cast<uint64_t>(result),
                                                  std::memory_order_relaxed);
    slot.io.nowait = false;
    slot.flags &= ~core::kSlotNowait;
    if (MoveToLane(index, word)) return;
    if (!IsVectored(slot.io.op)) {
      slot.io.buf = static_cast<char*>(slot.io.buf) + result;
      slot.io.nbytes -= static_cast<uint64_t>(result);
    }
    slot.io.offset += result;
    slot.io.nowait = false;
    slot.flags &= ~core::kSlotNowait;
    if (core::Move(slot, word, SlotState::kPoolQueued)) {
      PoolPush(index);
    }
    return;
  }
  Complete(index, SlotState::kInKernel, result);
}

bool Engine::StoppedShort(const core::IoRequest& io, int64_t result) {
  if (static_cast<uint64_t>(result) >= core::RequestBytes(io)) return false;
  if (IsWrite(io.op)) return true;
  if (!core::IsRead(io.op)) return false;
  // A short read of a pipe or socket is its real answer; of a regular file, only at end of file.
  struct stat st;
  return fstat(io.fd, &st) == 0 && (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
}

}  // namespace kaio::runtime
