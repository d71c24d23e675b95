#include "runtime/stream_lanes.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <system_error>

#include "core/syscalls.h"
#include "runtime/engine.h"

namespace kaio::runtime {

namespace {

using core::SlotState;
using core::WordGeneration;
using core::WordState;

constexpr uint64_t kWakeKey = ~uint64_t{0};  // epoll data of wake_fd_; other entries hold an fd

bool IsVectoredOp(short opcode) { return opcode == IO_CMD_PREADV || opcode == IO_CMD_PWRITEV; }

}  // namespace

StreamLanes::Order StreamLanes::Classify(int fd, short opcode) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Order::kFree;
  if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)) return Order::kStream;
  if (S_ISCHR(st.st_mode)) return Order::kCharDevice;
  if (opcode == IO_CMD_PWRITE || opcode == IO_CMD_PWRITEV) {
    const int flags = fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_APPEND)) return Order::kAppendPool;
  }
  return Order::kFree;
}

StreamLanes::StreamLanes(Engine& engine) : engine_(engine), slots_(engine.slots()) {}

StreamLanes::~StreamLanes() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    exiting_ = true;
    if (thread_.joinable()) WakeLocked();
  }
  if (thread_.joinable()) thread_.join();
  if (epoll_fd_ >= 0) close(epoll_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
}

uint64_t StreamLanes::threads_started() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_started_;
}

StreamLanes::Direction StreamLanes::DirectionOf(short opcode) {
  return opcode == IO_CMD_PWRITE || opcode == IO_CMD_PWRITEV ? kWrite : kRead;
}

bool StreamLanes::Push(uint32_t index, Order order) {
  core::Slot& slot = slots_.at(index);
  const int fd = slot.cb.aio_fildes;
  const Direction dir = DirectionOf(slot.cb.aio_lio_opcode);
  bool to_pool = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // The O_APPEND lanes never need the thread: their heads go from here, or from the pool
    // worker that finished the previous one, straight to the pool.
    if (order != Order::kAppendPool && !EnsureThreadLocked()) return false;
    Lane& lane = streams_[fd].lanes[dir];
    if (lane.requests.empty()) {
      lane.pool_only = order == Order::kAppendPool;
      lane.positional = order == Order::kCharDevice;
    }
    lane.requests.push_back(index);
    if (lane.requests.size() == 1) {
      if (lane.pool_only) {
        lane.in_pool = true;
        to_pool = true;
      } else {
        ready_.push_back(fd);
        WakeLocked();
      }
    }
  }
  if (to_pool) engine_.PoolPush(index);
  return true;
}

void StreamLanes::OnPoolDone(int fd, short opcode) {
  uint32_t next = core::SlotTable::kNoSlot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(fd);
    if (it == streams_.end()) return;
    Lane& lane = it->second.lanes[DirectionOf(opcode)];
    if (!lane.in_pool || lane.requests.empty()) return;
    lane.requests.pop_front();
    lane.in_pool = false;
    if (lane.requests.empty()) {
      EraseIfIdleLocked(fd);
    } else if (lane.pool_only) {
      lane.in_pool = true;
      next = lane.requests.front();
    } else {
      ready_.push_back(fd);
      WakeLocked();
    }
  }
  if (next != core::SlotTable::kNoSlot) engine_.PoolPush(next);
}

void StreamLanes::Kick() {
  std::lock_guard<std::mutex> lock(mu_);
  // Without the thread only O_APPEND lanes exist: a cancelled request there completes when its
  // turn comes, right after the regular-file write before it, which cannot wait on anything.
  if (!thread_.joinable()) return;
  sweep_ = true;
  WakeLocked();
}

bool StreamLanes::EnsureThreadLocked() {
  if (thread_.joinable()) return true;
  if (epoll_fd_ < 0) epoll_fd_ = core::MoveOutOfTheWay(epoll_create1(EPOLL_CLOEXEC));
  if (wake_fd_ < 0 && epoll_fd_ >= 0) {
    wake_fd_ = core::MoveOutOfTheWay(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = kWakeKey;
    if (wake_fd_ >= 0 && epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, wake_fd_, &ev) != 0) {
      close(wake_fd_);
      wake_fd_ = -1;
    }
  }
  if (epoll_fd_ < 0 || wake_fd_ < 0) return false;
  // kaio's threads never take the application's signals (see Engine::Create).
  sigset_t all_signals, caller_mask;
  sigfillset(&all_signals);
  pthread_sigmask(SIG_BLOCK, &all_signals, &caller_mask);
  try {
    thread_ = std::thread([this] { Loop(); });
  } catch (const std::system_error&) {
    // No thread to be had (RLIMIT_NPROC, address space): this request fails, the next one tries again.
  }
  pthread_sigmask(SIG_SETMASK, &caller_mask, nullptr);
  if (!thread_.joinable()) return false;
  pthread_setname_np(thread_.native_handle(), "kaio-streams");
  ++threads_started_;
  return true;
}

void StreamLanes::WakeLocked() {
  if (woken_) return;  // one write per look: the thread reads ready_ and sweep_ under the lock
  woken_ = true;
  uint64_t one = 1;
  ssize_t rc = write(wake_fd_, &one, sizeof(one));
  (void)rc;  // EAGAIN: the counter is saturated, i.e. already readable
}

void StreamLanes::Loop() {
  std::vector<struct epoll_event> events(64);
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (sweep_) SweepCancelled(lock);
    while (!ready_.empty()) {
      const int fd = ready_.back();
      ready_.pop_back();
      auto it = streams_.find(fd);
      if (it == streams_.end()) continue;
      RunLane(fd, kRead, lock);
      RunLane(fd, kWrite, lock);
      if (sweep_) SweepCancelled(lock);
    }
    if (exiting_) return;
    lock.unlock();
    int got = epoll_wait(epoll_fd_, events.data(), static_cast<int>(events.size()), -1);
    lock.lock();
    for (int i = 0; i < got; ++i) {
      if (events[i].data.u64 == kWakeKey) {
        uint64_t value;
        ssize_t rc = read(wake_fd_, &value, sizeof(value));
        (void)rc;
        woken_ = false;
        continue;
      }
      const int fd = static_cast<int>(events[i].data.u64);
      auto it = streams_.find(fd);
      if (it == streams_.end()) continue;
      // Unregistered at once, while its requests keep the fd open: removed later, when the last
      // one has completed, it could be a number the program has closed and reused since.
      epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
      Stream& stream = it->second;
      stream.registered = false;
      stream.armed = 0;
      for (Lane& lane : stream.lanes) lane.waiting = false;
      ready_.push_back(fd);
    }
  }
}

void StreamLanes::RunLane(int fd, Direction dir, std::unique_lock<std::mutex>& lock) {
  std::vector<uint32_t> to_pool;
  while (true) {
    auto it = streams_.find(fd);
    if (it == streams_.end()) break;
    Lane& lane = it->second.lanes[dir];
    if (lane.requests.empty() || lane.in_pool || lane.waiting) break;
    const uint32_t index = lane.requests.front();
    core::Slot& slot = slots_.at(index);
    // acquire: pairs with the producer's release into kPoolQueued (or a canceller's CAS).
    uint64_t word = slot.word.load(std::memory_order_acquire);
    if (WordState(word) == SlotState::kCancelledQueued) {
      lane.requests.pop_front();
      EraseIfIdleLocked(fd);  // before the completion hands the fd back to the program
      lock.unlock();
      engine_.Complete(index, SlotState::kCancelledQueued, -ECANCELED);
      lock.lock();
      continue;
    }
    if (lane.pool_only) {
      SendHeadToPoolLocked(lane, &to_pool);
      break;
    }
    // acq_rel: from here the head is ours (Cancel waits for the attempt's outcome).
    if (WordState(word) != SlotState::kPoolQueued ||
        !slot.word.compare_exchange_strong(word, core::PackWord(WordGeneration(word), SlotState::kStreamTrying),
                                           std::memory_order_acq_rel, std::memory_order_acquire)) {
      continue;  // cancelled just now: the next round sees kCancelledQueued
    }
    bool positional = lane.positional;
    int64_t result = 0;
    lock.unlock();  // the I/O itself runs unlocked: Push never waits for a copy of our data
    const Attempt attempt = TryWithoutBlocking(slot, &positional, &result);
    lock.lock();
    Lane& same = streams_[fd].lanes[dir];  // only this thread erases streams: still there
    same.positional = positional;
    if (attempt == Attempt::kDone) {
      same.requests.pop_front();
      EraseIfIdleLocked(fd);  // before the completion hands the fd back to the program
      lock.unlock();
      engine_.Complete(index, SlotState::kStreamTrying, result);
      lock.lock();
      continue;
    }
    // Not finished: back to kPoolQueued (only this thread moves a kStreamTrying slot; release:
    // whoever takes it next sees what this attempt wrote, slot.partial included).
    slot.word.store(core::PackWord(WordGeneration(word), SlotState::kPoolQueued), std::memory_order_release);
    if (attempt == Attempt::kCannotNowait) {
      same.pool_only = true;
      SendHeadToPoolLocked(same, &to_pool);
      break;
    }
    same.waiting = true;
    if (!ArmLocked(fd, streams_[fd])) {
      // Not pollable (epoll says EPERM): the pool's blocking call is the only way. The pool
      // resumes a plain request from its iocb, a vectored one `partial` bytes into its iovecs.
      same.waiting = false;
      same.pool_only = true;
      if (slot.partial > 0 && !IsVectoredOp(slot.cb.aio_lio_opcode)) {
        slot.cb.u.c.buf = static_cast<char*>(slot.cb.u.c.buf) + slot.partial;
        slot.cb.u.c.nbytes -= slot.partial;
        slot.cb.u.c.offset += static_cast<long long>(slot.partial);
      }
      SendHeadToPoolLocked(same, &to_pool);
    }
    break;
  }
  if (!to_pool.empty()) {
    lock.unlock();
    for (uint32_t index : to_pool) engine_.PoolPush(index);
    lock.lock();
  }
}

void StreamLanes::SendHeadToPoolLocked(Lane& lane, std::vector<uint32_t>* to_pool) {
  lane.in_pool = true;
  to_pool->push_back(lane.requests.front());
}

bool StreamLanes::ArmLocked(int fd, Stream& stream) {
  uint32_t want = 0;
  if (stream.lanes[kRead].waiting) want |= EPOLLIN;
  if (stream.lanes[kWrite].waiting) want |= EPOLLOUT;
  if (want == 0 || want == stream.armed) return true;
  struct epoll_event ev = {};
  ev.events = want | EPOLLONESHOT;
  ev.data.u64 = static_cast<uint64_t>(static_cast<uint32_t>(fd));
  // Registered only while a head waits (the loop unregisters on the event): MOD adds the other
  // direction to a wait in progress.
  int rc = epoll_ctl(epoll_fd_, stream.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
  if (rc != 0 && errno == ENOENT) {
    rc = epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);  // the program closed and reopened the number
  } else if (rc != 0 && errno == EEXIST) {
    rc = epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);  // another file on this number, dup'ed
  }
  if (rc != 0) {
    if (errno != EPERM) {
      // EBADF (closed under us) and the like: the next attempt reports the error to the request.
      ready_.push_back(fd);
      for (Lane& lane : stream.lanes) lane.waiting = false;
      return true;
    }
    return false;
  }
  stream.registered = true;
  stream.armed = want;
  return true;
}

void StreamLanes::EraseIfIdleLocked(int fd) {
  auto it = streams_.find(fd);
  if (it == streams_.end()) return;
  for (const Lane& lane : it->second.lanes) {
    if (!lane.requests.empty()) return;
  }
  if (it->second.registered) {
    // Drop the registration too (a cancelled head's): the number may be reused for another file.
    // Called before the last request's completion is delivered, while the fd is still the program's.
    epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  }
  streams_.erase(it);
}

void StreamLanes::SweepCancelled(std::unique_lock<std::mutex>& lock) {
  sweep_ = false;
  std::vector<uint32_t> cancelled;
  std::vector<int> idle;
  for (auto& [fd, stream] : streams_) {
    for (Lane& lane : stream.lanes) {
      for (auto it = lane.requests.begin(); it != lane.requests.end();) {
        // The pool's head is the pool's to complete.
        if (lane.in_pool && it == lane.requests.begin()) {
          ++it;
          continue;
        }
        const uint64_t word = slots_.at(*it).word.load(std::memory_order_acquire);
        if (WordState(word) == SlotState::kCancelledQueued) {
          if (it == lane.requests.begin()) lane.waiting = false;  // the next head needs a try
          cancelled.push_back(*it);
          it = lane.requests.erase(it);
        } else {
          ++it;
        }
      }
    }
    if (stream.lanes[kRead].requests.empty() && stream.lanes[kWrite].requests.empty()) {
      idle.push_back(fd);
    } else {
      ready_.push_back(fd);  // a new head may run now
    }
  }
  for (int fd : idle) EraseIfIdleLocked(fd);  // before the completions hand the fds back
  lock.unlock();
  for (uint32_t index : cancelled) engine_.Complete(index, SlotState::kCancelledQueued, -ECANCELED);
  lock.lock();
}

StreamLanes::Attempt StreamLanes::TryWithoutBlocking(core::Slot& slot, bool* positional, int64_t* result) {
  const struct iocb& cb = slot.cb;
  const int fd = cb.aio_fildes;
  const bool write = DirectionOf(cb.aio_lio_opcode) == kWrite;
  const bool vectored = IsVectoredOp(cb.aio_lio_opcode);
  while (true) {
    // What is left: a write resumes `partial` bytes in.
    uint64_t skip = slot.partial;
    iov_.clear();
    if (vectored) {
      const auto* iov = static_cast<const struct iovec*>(cb.u.c.buf);
      for (uint64_t i = 0; i < cb.u.c.nbytes; ++i) {
        if (skip >= iov[i].iov_len) {
          skip -= iov[i].iov_len;
          continue;
        }
        iov_.push_back({static_cast<char*>(iov[i].iov_base) + skip, iov[i].iov_len - skip});
        skip = 0;
      }
    } else {
      iov_.push_back({static_cast<char*>(cb.u.c.buf) + skip, cb.u.c.nbytes - skip});
    }
    // A seekable character device honours the offset, as glibc's pread does; a pipe or socket has
    // none (pread says ESPIPE; glibc then reads, ignoring aio_offset as POSIX allows).
    const off_t offset = *positional ? static_cast<off_t>(cb.u.c.offset + slot.partial) : -1;
    const int cnt = static_cast<int>(iov_.size());
    ssize_t n = write ? pwritev2(fd, iov_.data(), cnt, offset, RWF_NOWAIT)
                      : preadv2(fd, iov_.data(), cnt, offset, RWF_NOWAIT);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == ESPIPE && *positional) {
        *positional = false;
        continue;
      }
      if (err == EAGAIN) {
        // On a descriptor the program made non-blocking, read(2) and write(2) say EAGAIN rather
        // than wait, and so does glibc's aio_read/aio_write (its helper calls them): the answer.
        const int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || !(flags & O_NONBLOCK)) return Attempt::kWouldBlock;
        *result = slot.partial > 0 ? static_cast<int64_t>(slot.partial) : -EAGAIN;
        std::atomic_ref<uint64_t>(slot.partial).store(0, std::memory_order_relaxed);
        return Attempt::kDone;
      }
      if (err == EOPNOTSUPP && slot.partial == 0) return Attempt::kCannotNowait;
      // As write(2): what was written before the error is the result.
      *result = slot.partial > 0 ? static_cast<int64_t>(slot.partial) : -err;
      return Attempt::kDone;
    }
    if (!write) {
      *result = n;  // a stream read returns what it has; 0 at end of stream
      return Attempt::kDone;
    }
    // Relaxed: Engine::Cancel reads it while the slot says kPoolQueued; its CAS fails if we moved
    // the slot on, and otherwise the release into kPoolQueued ordered this write before its read.
    std::atomic_ref<uint64_t>(slot.partial).store(slot.partial + static_cast<uint64_t>(n), std::memory_order_relaxed);
    uint64_t total = 0;
    if (vectored) {
      const auto* iov = static_cast<const struct iovec*>(cb.u.c.buf);
      for (uint64_t i = 0; i < cb.u.c.nbytes; ++i) total += iov[i].iov_len;
    } else {
      total = cb.u.c.nbytes;
    }
    if (slot.partial >= total || n == 0) {
      *result = static_cast<int64_t>(slot.partial);
      std::atomic_ref<uint64_t>(slot.partial).store(0, std::memory_order_relaxed);  // the result carries it
      return Attempt::kDone;
    }
  }
}

}  // namespace kaio::runtime
