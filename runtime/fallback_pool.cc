// Engine, the fallback pool: blocking workers for what the kernel would block on (buffered
// writes, cache misses, ttys, O_APPEND lanes).
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

// ---------------------------------------------------------------- fallback pool

void Engine::PoolPush(uint32_t index) {
  // relaxed: a statistic.
  counters_.pool_requests.fetch_add(1, std::memory_order_relaxed);
  core::Slot& slot = slots_.at(index);
  // A stream lane's head is alone in its lane already, and keeps its lane's order: any worker.
  const int lane_fd = (slot.flags & core::kSlotFileWrite) && !(slot.flags & core::kSlotStream)
                          ? slot.cb.aio_fildes
                          : PoolQueue::kAnyWorker;
  {
    std::lock_guard<std::mutex> lock(pool_mu_);
    if (!pool_queue_.Push(index, lane_fd)) return;  // behind its lane's running write: its holder runs it
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
      // relaxed: a statistic.
      counters_.pool_threads.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!pool_threads_.empty()) {
      pool_cv_.notify_one();
      return;
    }
    // No worker at all, and none to be had: this request fails with EAGAIN (glibc's answer when it
    // cannot start a helper thread) instead of waiting for ever; the next one tries again.
    pool_queue_.RemoveLastPushed(index, lane_fd);
  }
  // A lane's head leaves its lane before its completion is delivered (see StreamLanes::OnPoolDone).
  if (slot.flags & core::kSlotStream) lanes_->OnPoolDone(index, slot.cb.aio_fildes, slot.cb.aio_lio_opcode);
  if (!Complete(index, SlotState::kPoolQueued, -EAGAIN)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
}

void Engine::PoolLoop() {
  std::unique_lock<std::mutex> lock(pool_mu_);
  PoolQueue::Work work;
  while (true) {
    if (!pool_queue_.Take(&work)) {
      // acquire, here and in the wait below (pool_mu_ orders it anyway: ~Engine stores it before it
      // notifies under the mutex). Lanes other workers hold are theirs to finish.
      if (exiting_.load(std::memory_order_acquire)) return;
      ++pool_idle_;
      pool_cv_.wait(lock, [this] { return !pool_queue_.Empty() || exiting_.load(std::memory_order_acquire); });
      --pool_idle_;
      continue;
    }
    do {
      lock.unlock();
      RunPoolRequest(work.index);
      lock.lock();
    } while (work.lane_fd != PoolQueue::kAnyWorker && pool_queue_.NextInLane(work.lane_fd, &work.index));
  }
}

void Engine::RunPoolRequest(uint32_t index) {
  core::Slot& slot = slots_.at(index);
  // acquire: pairs with the release into kPoolQueued (core::Publish, or the Move of the hop that pushed
  // it; a canceller's CAS continues it), so the iocb, flags and partial read below are what it wrote.
  uint64_t word = slot.word.load(std::memory_order_acquire);
  // A lane's head leaves its lane before its completion is delivered (see StreamLanes::OnPoolDone).
  const bool from_lane = (slot.flags & core::kSlotStream) != 0;
  if (WordState(word) == SlotState::kPoolQueued && core::Move(slot, word, SlotState::kPoolRunning)) {
    // relaxed: a statistic.
    counters_.pool_running.fetch_add(1, std::memory_order_relaxed);
    int64_t result = RunBlocking(slot.cb, slot.partial);
    if (slot.partial > 0) {
      // What the kernel already moved counts; an error on the rest is a short result, as write(2).
      result = result >= 0 ? result + static_cast<int64_t>(slot.partial) : static_cast<int64_t>(slot.partial);
    }
    // relaxed: a statistic.
    counters_.pool_running.fetch_sub(1, std::memory_order_relaxed);
    if (from_lane) lanes_->OnPoolDone(index, slot.cb.aio_fildes, slot.cb.aio_lio_opcode);
    Complete(index, SlotState::kPoolRunning, result);
  } else {
    if (from_lane) lanes_->OnPoolDone(index, slot.cb.aio_fildes, slot.cb.aio_lio_opcode);
    Complete(index, SlotState::kCancelledQueued, -ECANCELED);
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
