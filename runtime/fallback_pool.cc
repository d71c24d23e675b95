// The fallback pool (runtime/fallback_pool.h): its workers, and the engine's side of the hop (which
// requests go to which lane, what a worker does with one).
#include "runtime/fallback_pool.h"

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
#include <functional>
#include <cstdio>
#include <cstring>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "core/mailbox.h"
#include "core/request.h"
#include "runtime/engine.h"
#include "runtime/engine_internal.h"
#include "runtime/stream_lanes.h"

namespace kaio::runtime {

// ---------------------------------------------------------------- the pool's workers

FallbackPool::FallbackPool(core::SlotTable& slots, int max_threads, std::function<void(uint32_t)> run, PoolSpin spin)
    : max_threads_(std::max(1, max_threads)),
      spin_(CpusWeMayUse() >= 2 ? spin : PoolSpin{.spin_ns = 0}),
      run_(std::move(run)),
      queue_(slots) {}

int FallbackPool::CpusWeMayUse() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  return CPU_COUNT(&set);
}

bool FallbackPool::Push(uint32_t index, int lane_fd) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!queue_.Push(index, lane_fd)) return true;  // behind its lane's running write: its holder runs it
  // relaxed, both: the flag only ends the spin early; the request itself passes under mu_, which
  // the spinner takes before it looks at the queue.
  if (spinning_ && !spin_claimed_.load(std::memory_order_relaxed)) {
    spin_claimed_.store(true, std::memory_order_relaxed);
    spin_handoffs_.fetch_add(1, std::memory_order_relaxed);  // relaxed: a statistic
    return true;
  }
  if (idle_ > 0 || static_cast<int>(threads_.size()) >= max_threads_) {
    // Woken after the unlock: a worker woken under the lock finds mu_ still held and sleeps on it,
    // a second sleep and wake-up per request (glibc's condition variable does not move a waiter to
    // the mutex). The worker tests the queue under mu_, so the wake-up cannot be lost.
    lock.unlock();
    cv_.notify_one();
    return true;
  }
  // This may run on an inline_io requester's thread: the worker must not inherit its signal mask
  // (kaio's threads block every signal, so a process-directed signal never lands on them).
  sigset_t all_signals, caller_mask;
  sigfillset(&all_signals);
  pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
  bool started = true;
  try {
    threads_.emplace_back([this] { Loop(); });
  } catch (const std::system_error&) {
    started = false;  // RLIMIT_NPROC, address space: the workers there are will get to it
  }
  pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
  if (started) {
    std::string name = absl::StrCat("kaio-pool-", threads_.size() - 1);
    pthread_setname_np(threads_.back().native_handle(), name.substr(0, 15).c_str());
    // relaxed: a statistic.
    threads_started_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  if (!threads_.empty()) {
    lock.unlock();
    cv_.notify_one();
    return true;
  }
  // No worker at all, and none to be had: not queued (the caller fails it with EAGAIN, glibc's
  // answer when it cannot start a helper thread, instead of letting it wait for ever).
  queue_.RemoveLastPushed(index, lane_fd);
  return false;
}

void FallbackPool::Stop() {
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    spin_claimed_.store(true, std::memory_order_relaxed);  // ends a spin now (relaxed: see Push)
    cv_.notify_all();
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

void FallbackPool::Loop() {
  core::Mailbox::MarkPoolThread();  // a napping requester need not be woken by us (Client::Wait)
  std::unique_lock<std::mutex> lock(mu_);
  PoolQueue::Work work;
  while (true) {
    if (!queue_.Take(&work)) {
      // Lanes other workers hold are theirs to finish.
      if (stopping_) return;
      // A requester that gets one answer at a time (iodepth 1, a signal per request) sends its
      // next request one round trip after the last answer: a sleeping worker then costs a wake-up
      // of an idle CPU per request (the pusher's futex wake, and on a VM the wake of a halted
      // vCPU). So when the last idle stretch was a round trip's length (longer than a stream's
      // gap, shorter than the spin) and every other worker sleeps (the pool is not busy: the
      // spin takes no CPU a busy pool needs), poll for a while first. A stretch the spin does
      // not cover is followed by a sleep, and the next spin waits for such a stretch again
      // (measured from before the spin, so stretches a little longer than it do not keep a
      // worker spinning in vain).
      const int64_t idle_since = core::MonotonicNs();
      if (spin_.spin_ns > 0 && last_idle_was_round_trip_ && !spinning_ && idle_ + 1 == static_cast<int>(threads_.size())) {
        spinning_ = true;
        spin_claimed_.store(false, std::memory_order_relaxed);  // relaxed: see Push
        lock.unlock();
        const bool claimed = SpinForPush();
        lock.lock();
        spinning_ = false;
        const int64_t spun = core::MonotonicNs() - idle_since;
        if (claimed || !queue_.Empty() || stopping_) {
          last_idle_was_round_trip_ = spun >= spin_.streaming_gap_ns;
          continue;
        }
      }
      ++idle_;
      cv_.wait(lock, [this] { return !queue_.Empty() || stopping_; });
      --idle_;
      // Measured to the wake-up, so with the wake-up's own latency.
      const int64_t stretch = core::MonotonicNs() - idle_since - spin_.wake_ns;
      last_idle_was_round_trip_ = stretch < spin_.spin_ns && stretch >= spin_.streaming_gap_ns;
      continue;
    }
    do {
      lock.unlock();
      run_(work.index);
      lock.lock();
    } while (work.lane_fd != PoolQueue::kAnyWorker && queue_.NextInLane(work.lane_fd, &work.index));
  }
}

bool FallbackPool::SpinForPush() {
  const int64_t give_up = core::MonotonicNs() + spin_.spin_ns;
  while (true) {
    // A few loads between clock reads (each pause is tens of cycles, so this is ~1 us).
    for (int i = 0; i < 32; ++i) {
      // relaxed: see Push.
      if (spin_claimed_.load(std::memory_order_relaxed)) return true;
      __builtin_ia32_pause();
    }
    if (core::MonotonicNs() >= give_up) return false;
  }
}

// ---------------------------------------------------------------- the engine's side

void Engine::PoolPush(uint32_t index) {
  // relaxed: a statistic.
  counters_.pool_requests.fetch_add(1, std::memory_order_relaxed);
  core::Slot& slot = slots_.at(index);
  // A stream lane's head is alone in its lane already, and keeps its lane's order: any worker.
  const int lane_fd = (slot.flags & core::kSlotFileWrite) && !(slot.flags & core::kSlotStream)
                          ? slot.io.fd
                          : PoolQueue::kAnyWorker;
  if (pool_.Push(index, lane_fd)) return;
  // A lane's head leaves its lane before its completion is delivered (see StreamLanes::OnPoolDone).
  if (slot.flags & core::kSlotStream) lanes_->OnPoolDone(index, slot.io.fd, slot.io.op);
  if (!Complete(index, SlotState::kPoolQueued, -EAGAIN)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
}

void Engine::RunPoolRequest(uint32_t index) {
  core::Slot& slot = slots_.at(index);
  // acquire: pairs with the release into kPoolQueued (core::Publish, or the Move of the hop that pushed
  // it; a canceller's CAS continues it), so the request, flags and partial read below are what it wrote.
  uint64_t word = core::Look(slot);
  // A lane's head leaves its lane before its completion is delivered (see StreamLanes::OnPoolDone).
  const bool from_lane = (slot.flags & core::kSlotStream) != 0;
  if (WordState(word) == SlotState::kPoolQueued && core::Move(slot, word, SlotState::kPoolRunning)) {
    // relaxed: a statistic.
    counters_.pool_running.fetch_add(1, std::memory_order_relaxed);
    // A buffered file write is here because the kernel refuses RWF_NOWAIT for it, not because it
    // would wait for the device, so it is done in microseconds: its requester may nap for it
    // (core/slot.h). A read is here because it missed the page cache: device latency, not worth a
    // nap (fallback_bench's cold-cache reader lost 0.83x when those counted too). The sink lives at
    // least until this request is delivered, below. relaxed: a hint.
    core::CompletionSink* const sink =
        (slot.flags & core::kSlotFileWrite) ? slot.sink.load(std::memory_order_relaxed) : nullptr;
    if (sink != nullptr) sink->pool_running.fetch_add(1, std::memory_order_relaxed);
    int64_t result = RunBlocking(slot.io, slot.partial);
    if (sink != nullptr) sink->pool_running.fetch_sub(1, std::memory_order_relaxed);
    if (slot.partial > 0) {
      // What the kernel already moved counts; an error on the rest is a short result, as write(2).
      result = result >= 0 ? result + static_cast<int64_t>(slot.partial) : static_cast<int64_t>(slot.partial);
    }
    // relaxed: a statistic.
    counters_.pool_running.fetch_sub(1, std::memory_order_relaxed);
    if (from_lane) lanes_->OnPoolDone(index, slot.io.fd, slot.io.op);
    Complete(index, SlotState::kPoolRunning, result);
  } else {
    if (from_lane) lanes_->OnPoolDone(index, slot.io.fd, slot.io.op);
    Complete(index, SlotState::kCancelledQueued, -ECANCELED);
  }
}

int64_t RunBlocking(const core::IoRequest& io, uint64_t vectored_skip) {
  const int fd = io.fd;
  void* buf = io.buf;
  const off_t offset = static_cast<off_t>(io.offset);
  const auto* iov = static_cast<const struct iovec*>(buf);
  int iovcnt = static_cast<int>(io.nbytes);
  std::vector<struct iovec> rest;  // the pool's slow path: one allocation for a resumed vectored request
  if (IsVectored(io.op) && vectored_skip > 0) {
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
    switch (io.op) {
      case core::IoOp::kRead:
        n = pread(fd, buf, io.nbytes, offset);
        if (n < 0 && errno == ESPIPE) n = read(fd, buf, io.nbytes);  // pipes, sockets
        break;
      case core::IoOp::kWrite:
        n = pwrite(fd, buf, io.nbytes, offset);
        if (n < 0 && errno == ESPIPE) n = write(fd, buf, io.nbytes);
        break;
      case core::IoOp::kReadv:
        n = preadv(fd, iov, iovcnt, offset);
        if (n < 0 && errno == ESPIPE) n = readv(fd, iov, iovcnt);
        break;
      case core::IoOp::kWritev:
        n = pwritev(fd, iov, iovcnt, offset);
        if (n < 0 && errno == ESPIPE) n = writev(fd, iov, iovcnt);
        break;
      case core::IoOp::kFsync:
        n = fsync(fd);
        break;
      case core::IoOp::kFdsync:
        n = fdatasync(fd);
        break;
      case core::IoOp::kNone:
        return -EINVAL;
    }
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

}  // namespace kaio::runtime
