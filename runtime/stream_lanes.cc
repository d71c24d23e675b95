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

#include "core/request.h"
#include "core/syscalls.h"
#include "runtime/engine.h"

namespace kaio::runtime {

namespace {

using core::SlotState;
using core::WordGeneration;
using core::WordState;

constexpr uint64_t kWakeKey = ~uint64_t{0};  // epoll data of wake_fd_; other entries hold an fd


}  // namespace

StreamLanes::Kind StreamLanes::Classify(int fd, int known_flags) {
  // statx for the type alone, AT_STATX_DONT_SYNC: no attribute refresh (an NFS getattr, a FUSE
  // round trip) on the submitting thread.
  struct statx stx;
  if (statx(fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE, &stx) != 0) return Kind::kFile;
  if (S_ISFIFO(stx.stx_mode) || S_ISSOCK(stx.stx_mode)) return Kind::kStream;
  if (S_ISCHR(stx.stx_mode)) return Kind::kCharDevice;
  const int flags = known_flags >= 0 ? known_flags : fcntl(fd, F_GETFL);
  if (flags >= 0 && (flags & O_APPEND)) return Kind::kAppendFile;
  return flags >= 0 && (flags & O_DIRECT) ? Kind::kDirectFile : Kind::kFile;
}

namespace {
int MakeEpollSet() { return epoll_create1(EPOLL_CLOEXEC); }
int MakeWakeFd() { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }
}  // namespace

StreamLanes::StreamLanes(Engine& engine)
    : engine_(engine), slots_(engine.slots()), epoll_fd_(-1, MakeEpollSet), wake_fd_(-1, MakeWakeFd) {}

StreamLanes::~StreamLanes() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    exiting_ = true;
    if (thread_.joinable()) WakeLocked();
  }
  if (thread_.joinable()) thread_.join();
}

uint64_t StreamLanes::threads_started() const {
  std::lock_guard<std::mutex> lock(mu_);
  return threads_started_;
}

StreamLanes::Direction StreamLanes::DirectionOf(core::IoOp opcode) {
  return core::IsWrite(opcode) ? kWrite : kRead;
}

bool StreamLanes::Push(uint32_t index, Order order, bool front) {
  core::Slot& slot = slots_.at(index);
  const int fd = slot.io.fd;
  const Direction dir = DirectionOf(slot.io.op);
  bool to_pool = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // An O_APPEND lane's heads go from here, or from the pool worker that finished the previous
    // one, straight to the pool; the thread is needed when one must wait (Ready) or is cancelled.
    const bool head_now = order == Order::kAppendPool && engine_.NothingOutside(fd, dir == kWrite);
    if (!head_now && !EnsureThreadLocked()) return false;
    Lane& lane = streams_[fd].lanes[dir];
    if (lane.requests.empty()) {
      lane.pool_only = order == Order::kAppendPool;
    }
    if (front) {
      // Older than all there: it went the usual way because nothing of its fd was in flight, and
      // a head the pool ran holds its fd's busy count until it has left the lane (OnPoolDone).
      lane.requests.push_front(index);
    } else {
      lane.requests.push_back(index);
    }
    if (lane.requests.size() == 1 && head_now) {
      lane.in_pool = true;
      to_pool = true;
    } else if (lane.requests.size() == 1 || front) {
      ready_.push_back(fd);
      WakeLocked();
    }
  }
  if (to_pool) engine_.PoolPush(index);
  return true;
}

void StreamLanes::Ready(int fd) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!thread_.joinable() || streams_.find(fd) == streams_.end()) return;
  ready_.push_back(fd);
  WakeLocked();
}

void StreamLanes::OnPoolDone(uint32_t index, int fd, core::IoOp opcode) {
  uint32_t next = core::SlotTable::kNoSlot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = streams_.find(fd);
    if (it == streams_.end()) return;
    Lane& lane = it->second.lanes[DirectionOf(opcode)];
    // The head is `index` by construction; the check keeps a broken rule from popping another.
    if (!lane.in_pool || lane.requests.empty() || lane.requests.front() != index) return;
    lane.requests.pop_front();
    lane.in_pool = false;
    if (lane.requests.empty()) {
      EraseIfIdleLocked(fd);
    } else if (lane.pool_only && engine_.NothingOutside(fd, DirectionOf(opcode) == kWrite)) {
      lane.in_pool = true;
      next = lane.requests.front();
    } else if (EnsureThreadLocked()) {  // an O_APPEND lane that must wait needs the thread too
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
  if (!epoll_fd_.Open()) return false;
  if (wake_fd_.get() < 0 && (!wake_fd_.Open() || !WatchWakeFdLocked())) return false;
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

bool StreamLanes::WatchWakeFdLocked() {
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeKey;
  return epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) == 0;
}

void StreamLanes::WakeLocked() {
  // One write per look: the thread reads ready_ and sweep_ under the lock.
  if (woken_ || wake_fd_.get() < 0) return;
  woken_ = true;
  uint64_t one = 1;
  ssize_t rc = write(wake_fd_.get(), &one, sizeof(one));
  // EAGAIN: the counter is saturated, i.e. already readable. EBADF: the program closed it; the
  // thread's bounded wait ends within kIdleLookMs and repairs it.
  (void)rc;
}

void StreamLanes::RepairLocked() {
  const int epoll_fd = epoll_fd_.get();
  const int wake_fd = wake_fd_.get();
  const bool new_set = epoll_fd_.RepairIfLost(epoll_fd);
  const bool new_wake = wake_fd_.RepairIfLost(wake_fd);
  if (new_set || new_wake) {
    WatchWakeFdLocked();
    woken_ = false;
  }
  if (!new_set) return;
  // A new set knows nothing: register every waiting head again, on kaio's duplicate if the program
  // left it alone, else from the number (the next attempt).
  for (auto& [fd, stream] : streams_) {
    for (Lane& lane : stream.lanes) {
      lane.registered = false;
      if (lane.held >= 0) {
        struct stat st;
        if (fstat(lane.held, &st) != 0 || st.st_dev != lane.held_dev || st.st_ino != lane.held_ino) {
          lane.held = -1;  // the program's number now: not ours to close
        }
      }
      if (!lane.waiting) continue;
      lane.waiting = false;
      ready_.push_back(fd);  // tried again, then waits on the new set
    }
  }
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
    // Bounded: a program that closes the epoll set while we wait in it leaves us in a set nobody
    // can add to (see core::HiddenFd).
    int got = epoll_wait(epoll_fd_.get(), events.data(), static_cast<int>(events.size()), core::kIdleLookMs);
    const int err = errno;
    lock.lock();
    if (got == 0 || (got < 0 && (err == EBADF || err == EINVAL))) RepairLocked();
    for (int i = 0; i < got; ++i) {
      if (events[i].data.u64 == kWakeKey) {
        uint64_t value;
        ssize_t rc = read(wake_fd_.get(), &value, sizeof(value));
        (void)rc;
        woken_ = false;
        continue;
      }
      const int fd = static_cast<int>(events[i].data.u64 >> 1);
      auto it = streams_.find(fd);
      if (it == streams_.end()) continue;
      // One-shot: the registration is disarmed until ArmLocked re-arms it. It watches kaio's own
      // duplicate, so it stays valid whatever the program does with the number.
      it->second.lanes[events[i].data.u64 & 1].waiting = false;
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
    // The one request of this fd that went the usual way (before anyone knew it was a stream)
    // runs first; Engine tells us (Ready) when it is done.
    if (!engine_.NothingOutside(fd, dir == kWrite)) break;
    const uint32_t index = lane.requests.front();
    core::Slot& slot = slots_.at(index);
    // acquire: pairs with the producer's release into kPoolQueued (or a canceller's CAS).
    uint64_t word = core::Look(slot);
    if (WordState(word) == SlotState::kCancelledQueued) {
      lane.requests.pop_front();
      ReleaseHeldLocked(lane);
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
    // acq_rel: from here the head is ours (Cancel waits for the attempt's outcome). A head that
    // has moved data waits in kPoolRunning (see below), where Cancel cannot take it.
    if ((WordState(word) != SlotState::kPoolQueued && WordState(word) != SlotState::kPoolRunning) ||
        !core::Move(slot, word, SlotState::kStreamTrying)) {
      continue;  // cancelled just now: the next round sees kCancelledQueued
    }
    // Every request tries its offset first (ESPIPE: a pipe or socket, which has none): what a lane
    // learned of a number must not decide how a later file on it is read, should the program
    // close and reuse it while a cancelled request of the old one still sits in the lane.
    bool positional = true;
    int64_t result = 0;
    const int io_fd = lane.held >= 0 ? lane.held : fd;  // a head that has started keeps its file
    lock.unlock();  // the I/O itself runs unlocked: Push never waits for a copy of our data
    Attempt attempt = TryWithoutBlocking(slot, io_fd, &positional, &result);
    lock.lock();
    Lane& same = streams_[fd].lanes[dir];  // only this thread erases streams: still there
    bool to_pool_now = attempt == Attempt::kCannotNowait;
    if (attempt == Attempt::kWouldBlock) {
      same.waiting = true;
      // EPERM (cannot be polled), ENOSPC (max_user_watches), ENOMEM: the pool's blocking call is
      // the only way left.
      if (!ArmLocked(fd, dir, same)) {
        same.waiting = false;
        to_pool_now = true;
      }
    }
    if (to_pool_now && slot.partial > 0) {
      // Part written, and no way to wait for room without a thread: the short count is the
      // result, as write(2)'s when it stops (handed to the pool, a Cancel that read `partial`
      // before this attempt could win against data already moved).
      result = static_cast<int64_t>(slot.partial);
      // Relaxed: as in TryWithoutBlocking's store of partial (the attempt ends in a completion).
      std::atomic_ref<uint64_t>(slot.partial).store(0, std::memory_order_relaxed);
      attempt = Attempt::kDone;
    }
    if (attempt == Attempt::kDone) {
      same.requests.pop_front();
      ReleaseHeldLocked(same);
      EraseIfIdleLocked(fd);  // before the completion hands the fd back to the program
      lock.unlock();
      engine_.Complete(index, SlotState::kStreamTrying, result);
      lock.lock();
      continue;
    }
    if (to_pool_now) {
      ReleaseHeldLocked(same);  // the pool's blocking call uses the number, as glibc's helper would
      same.pool_only = true;
      // release: the worker that acquires kPoolQueued sees the request (nothing moved: cancellable).
      core::Publish(slot, word, SlotState::kPoolQueued);
      SendHeadToPoolLocked(same, &to_pool);
      break;
    }
    // Not finished: back to waiting (only this thread moves a kStreamTrying slot; release: whoever
    // takes it next sees what this attempt wrote, slot.partial included). With data moved it can
    // no longer be cancelled: kPoolRunning, not kPoolQueued, or a Cancel that read `partial` before
    // this attempt would find the very word it expects and win its CAS.
    const SlotState waits = slot.partial > 0 ? SlotState::kPoolRunning : SlotState::kPoolQueued;
    core::Publish(slot, word, waits);
    if (attempt == Attempt::kYield) {
      // Other streams get a turn, then it goes on, on the file it started on (-1 if no duplicate
      // can be had: the number).
      if (same.held < 0) HoldFileLocked(same, io_fd);
      ready_.push_back(fd);
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

bool StreamLanes::ArmLocked(int fd, Direction dir, Lane& lane) {
  if (lane.held < 0) {
    HoldFileLocked(lane, fd);
    if (lane.held < 0) {
      if (errno == EBADF) {
        // Closed under us: the next attempt reports the error to the request.
        lane.waiting = false;
        ready_.push_back(fd);
        return true;
      }
      return false;  // EMFILE: the pool's blocking call on the number
    }
  }
  struct epoll_event ev = {};
  ev.events = (dir == kRead ? EPOLLIN : EPOLLOUT) | EPOLLONESHOT;
  ev.data.u64 = static_cast<uint64_t>(static_cast<uint32_t>(fd)) << 1 | static_cast<uint64_t>(dir);
  if (epoll_ctl(epoll_fd_.get(), lane.registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, lane.held, &ev) != 0) {
    ReleaseHeldLocked(lane);
    return false;  // EPERM (cannot be polled), ENOSPC (max_user_watches), ENOMEM: the pool's way
  }
  lane.registered = true;
  return true;
}

void StreamLanes::HoldFileLocked(Lane& lane, int fd) {
  lane.held = core::DupBesideHidden(fd);
  struct stat st;
  if (lane.held >= 0 && fstat(lane.held, &st) == 0) {
    lane.held_dev = st.st_dev;
    lane.held_ino = st.st_ino;
  }
}

void StreamLanes::ReleaseHeldLocked(Lane& lane) {
  lane.waiting = false;
  if (lane.held < 0) return;
  // Removed by hand: epoll forgets a registration only when the file itself goes, and the program
  // may keep it open.
  if (lane.registered) epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, lane.held, nullptr);
  close(lane.held);
  lane.held = -1;
  lane.registered = false;
}

void StreamLanes::EraseIfIdleLocked(int fd) {
  auto it = streams_.find(fd);
  if (it == streams_.end()) return;
  for (const Lane& lane : it->second.lanes) {
    if (!lane.requests.empty()) return;
  }
  streams_.erase(it);  // every head that left released its duplicate
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
        // acquire: pairs with the canceller's CAS into kCancelledQueued (we complete what it marked).
        const uint64_t word = core::Look(slots_.at(*it));
        if (WordState(word) == SlotState::kCancelledQueued) {
          if (it == lane.requests.begin()) ReleaseHeldLocked(lane);  // the next head needs a try
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

StreamLanes::Attempt StreamLanes::TryWithoutBlocking(core::Slot& slot, int fd, bool* positional,
                                                     int64_t* result) {
  const core::IoRequest& io = slot.io;
  const bool write = DirectionOf(io.op) == kWrite;
  const bool vectored = core::IsVectored(io.op);
  // One attempt moves at most this much before the other streams get a turn (a 100 MB write to a
  // fast socket would otherwise hold the lanes' thread, and every other stream, for a long time).
  constexpr uint64_t kYieldAfter = 1 << 20;
  const uint64_t partial_at_start = slot.partial;
  while (true) {
    // What is left: a write resumes `partial` bytes in.
    uint64_t skip = slot.partial;
    iov_.clear();
    if (vectored) {
      const auto* iov = static_cast<const struct iovec*>(io.buf);
      for (uint64_t i = 0; i < io.nbytes; ++i) {
        if (skip >= iov[i].iov_len) {
          skip -= iov[i].iov_len;
          continue;
        }
        iov_.push_back({static_cast<char*>(iov[i].iov_base) + skip, iov[i].iov_len - skip});
        skip = 0;
      }
    } else {
      iov_.push_back({static_cast<char*>(io.buf) + skip, io.nbytes - skip});
    }
    // A seekable character device honours the offset, as glibc's pread does; a pipe or socket has
    // none (pread says ESPIPE; glibc then reads, ignoring aio_offset as POSIX allows).
    const off_t offset = *positional ? static_cast<off_t>(io.offset + slot.partial) : -1;
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
        // Relaxed: as in TryWithoutBlocking's store of partial (the attempt ends in a completion).
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
    const uint64_t total = core::RequestBytes(io);
    if (slot.partial < total && n > 0 && slot.partial - partial_at_start >= kYieldAfter) return Attempt::kYield;
    if (slot.partial >= total || n == 0) {
      *result = static_cast<int64_t>(slot.partial);
      // Relaxed: as in TryWithoutBlocking's store of partial (the attempt ends in a completion).
      std::atomic_ref<uint64_t>(slot.partial).store(0, std::memory_order_relaxed);  // the result carries it
      return Attempt::kDone;
    }
  }
}

}  // namespace kaio::runtime
