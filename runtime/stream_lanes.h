// StreamLanes: requests on descriptors whose order is part of the data, one at a time per direction.
//
// A pipe, a socket, a FIFO or a character device (a tty) cannot seek: POSIX says writes to such a
// device land in call order, and glibc also keeps reads in call order. Writes to an O_APPEND file
// must land in call order too. The engine's other paths run requests in parallel (the kernel, four
// pool workers), which interleaves a stream's chunks. So every read or write on such a descriptor
// goes to a lane, one per (fd number, direction): a FIFO of requests of which only the head runs.
// The two directions are independent (a socket's write never waits behind its idle read).
//
// How a head runs:
//  - a stream: on the lanes' own thread, without blocking (preadv2/pwritev2 with RWF_NOWAIT); when
//    the descriptor has nothing to give (EAGAIN), the lane waits for readiness in one epoll set, so
//    an idle stream holds no thread and never holds back file I/O or another stream. A write goes on
//    until all of it is written, as write(2) on a blocking descriptor does; a read completes with
//    what the first read that finds data returns (0 at end of stream).
//  - a descriptor that cannot promise not to block (RWF_NOWAIT refused: some character devices), or
//    an O_APPEND file: in the engine's blocking pool, still one at a time per lane.
// A lane's requests wait in kPoolQueued, so Engine::Cancel really cancels every one that has not
// started moving data, the waiting head included (Kick() then completes them at once); during an
// attempt (kStreamTrying, microseconds) Cancel waits for its outcome.
//
// Threading: Push, OnPoolDone and Kick may be called from any thread; one mutex guards the lanes (a
// stream request costs syscalls anyway, and no request on a regular file ever comes here). Heads are
// run by the lanes' thread (started on the first stream request) or by the pool, never both: a lane
// with its head in the pool is `in_pool` until OnPoolDone.
//
// Memory ordering: a request enters a lane in kPoolQueued, stored (release) by the caller before
// Push, and the mutex orders every lane change; the lanes' thread takes a head with an acq_rel CAS
// kPoolQueued -> kStreamTrying, so it sees the request the producer described, and Complete() publishes the
// result. An attempt that finds nothing stores kPoolQueued back (release), after what it wrote.
#ifndef KAIO_RUNTIME_STREAM_LANES_H_
#define KAIO_RUNTIME_STREAM_LANES_H_

#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/hidden_fd.h"
#include "core/io_request.h"
#include "core/slot.h"

namespace kaio::runtime {

class Engine;

class StreamLanes {
 public:
  // How a request's descriptor must be run.
  enum class Order : uint8_t {
    kFree,        // a regular file or block device: any order, the engine's usual paths
    kStream,      // a pipe, FIFO or socket: a lane, run without blocking on the lanes' thread
    kCharDevice,  // a tty or other character device: the same, trying its offset first
    kAppendPool,  // an O_APPEND write: a lane, run in the blocking pool
  };
  // What a descriptor is, as far as order goes.
  // kFile: a regular file or block device, buffered; kDirectFile: the same opened O_DIRECT (its
  // order is free too; the pool runs buffered writes one per fd, these not).
  enum class Kind : uint8_t { kUnknown = 0, kFile, kAppendFile, kStream, kCharDevice, kDirectFile };
  // Looks at the descriptor (statx, and F_GETFL for a regular file unless `known_flags`, the
  // caller's F_GETFL of it, is >= 0). An fd statx refuses is kFile: the kernel gives the request
  // its error (EBADF) the usual way.
  static Kind Classify(int fd, int known_flags = -1);
  // Inline: called for every read and write that finds another of its fd in flight.
  static Order OrderFor(Kind kind, core::IoOp opcode) {
    switch (kind) {
      case Kind::kStream:
        return Order::kStream;
      case Kind::kCharDevice:
        return Order::kCharDevice;
      case Kind::kAppendFile:
        return core::IsWrite(opcode) ? Order::kAppendPool : Order::kFree;
      default:
        return Order::kFree;
    }
  }

  explicit StreamLanes(Engine& engine);
  ~StreamLanes();  // stops the lanes' thread; the lanes must be empty
  StreamLanes(const StreamLanes&) = delete;
  StreamLanes& operator=(const StreamLanes&) = delete;

  // Takes a read or write whose slot the caller moved to kPoolQueued (release) and marked
  // kSlotStream, at the lane's tail, or with `front` at its head (the one request of the fd that
  // went the usual way and turned out to need its lane: it is older than everything there). False
  // if the lanes' thread cannot be created (the caller completes the request with EAGAIN, as glibc
  // does when it cannot start a helper thread).
  bool Push(uint32_t index, Order order, bool front = false);
  // The fd's requests outside the lanes (Engine::NothingOutside) are all done: its lanes may run.
  void Ready(int fd);
  // The pool finished (or cancelled) a lane's head, `index`: the lane's next request may run.
  // Called before the head's completion is delivered, never after: once delivered, the program may
  // submit the fd's next request, which may find the lane empty-looking and take its head (a
  // request that went the usual way is pushed at the front), and a stale head still in the lane
  // would then be popped in its place, the new request lost.
  void OnPoolDone(uint32_t index, int fd, core::IoOp opcode);
  // A request in a lane was cancelled: complete it now, not when its turn comes.
  void Kick();

  uint64_t threads_started() const;

 private:
  enum Direction { kRead = 0, kWrite = 1 };
  struct Lane {
    std::deque<uint32_t> requests;  // the head runs; the rest wait their turn
    bool pool_only = false;         // O_APPEND, or RWF_NOWAIT refused: heads run in the pool
    bool in_pool = false;           // the head is the pool's until OnPoolDone
    bool waiting = false;           // the head waits for readiness
    // kaio's own duplicate of the head's file, taken when it first has to wait, and what the epoll
    // set watches: the program may close its number meanwhile (glibc's helper, blocked in read(2),
    // keeps the file too) or reuse it, and neither must touch this request. Closed when the head
    // leaves the lane; later heads start again from the number, as glibc's next call would.
    int held = -1;
    dev_t held_dev = 0;  // what `held` names, to tell it from a number the program reused
    ino_t held_ino = 0;
    bool registered = false;  // `held` is in the epoll set (one-shot: disarmed once it fired)
  };
  struct Stream {
    Lane lanes[2];
  };
  enum class Attempt { kDone, kWouldBlock, kCannotNowait, kYield };

  static Direction DirectionOf(core::IoOp opcode);
  bool EnsureThreadLocked();
  void WakeLocked();
  void Loop();
  // Runs the lane's head while it can finish without blocking (called with the lock held).
  void RunLane(int fd, Direction dir, std::unique_lock<std::mutex>& lock);
  // Completes, outside the lock, every lane request cancelled so far (with the lock held).
  void SweepCancelled(std::unique_lock<std::mutex>& lock);
  // Waits for the lane's head to be able to move data (with the lock held). False: the fd cannot be
  // polled, the head goes to the pool instead.
  bool ArmLocked(int fd, Direction dir, Lane& lane);
  // Takes kaio's duplicate of the head's file (-1 in lane.held if none can be had).
  void HoldFileLocked(Lane& lane, int fd);
  // The head is leaving the lane: drop kaio's duplicate of its file (with the lock held).
  void ReleaseHeldLocked(Lane& lane);
  void EraseIfIdleLocked(int fd);
  // The program closed (or reused) the epoll set's or the wake-up's number: replace them, and
  // register again every head that waits (with the lock held). Called after an idle timeout.
  void RepairLocked();
  // Adds wake_fd_ to the epoll set (with the lock held).
  bool WatchWakeFdLocked();
  // `fd` is the request's own, or the lane's duplicate of its file.
  Attempt TryWithoutBlocking(core::Slot& slot, int fd, bool* positional, int64_t* result);
  // Hands the head to the pool (with the lock held; the push itself happens after unlocking).
  void SendHeadToPoolLocked(Lane& lane, std::vector<uint32_t>* to_pool);

  Engine& engine_;
  core::SlotTable& slots_;
  core::HiddenFd epoll_fd_;
  core::HiddenFd wake_fd_;  // an eventfd in the epoll set: new heads, pool results, cancels, exit

  mutable std::mutex mu_;
  std::unordered_map<int, Stream> streams_;  // node-based: references survive inserts
  std::vector<int> ready_;                   // fds whose lanes have a head to try
  bool sweep_ = false;                       // a lane request was cancelled
  bool woken_ = false;                       // wake_fd_ written since the thread last looked
  bool exiting_ = false;
  std::thread thread_;
  uint64_t threads_started_ = 0;
  std::vector<struct iovec> iov_;  // the lanes' thread's scratch (a resumed vectored request)
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_STREAM_LANES_H_
