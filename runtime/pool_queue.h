// PoolQueue: what the fallback pool's workers take, in which order. Two kinds of work:
//   - requests any worker may run at any time (cache-missing reads, fsyncs, a stream lane's head):
//     one FIFO, taken first;
//   - buffered writes the filesystem cannot do without blocking (ext4 refuses every one under
//     RWF_NOWAIT): one lane per fd, run one at a time by whichever worker holds the lane. Such a
//     write takes the file's inode lock for its whole copy, so two workers writing one file only
//     take turns on the lock, spinning and sleeping on it; and a write queued behind a lane's
//     running one wakes no worker at all, where the FIFO woke one per write (kaio_bench buffered
//     randwrite qd32, one file: 15.5-19.5 us of CPU per write with the FIFO's four workers, 11.7-12.6
//     with the lane's one; BENCHMARKS.md). Order within a lane is FIFO, though nothing depends on it: these are writes to a
//     regular file without O_APPEND, whose order kaio does not promise.
// A lane's holder runs at most kLaneTurn writes in a row while others wait, then the lane goes to
// the back of the ready lanes, so a file written without pause cannot keep a worker from the rest.
//
// Threading: none of its own; every call is made under FallbackPool's mutex. Allocation: the
// lanes are linked through the slots (Slot::pool_next), the lanes and the FIFOs allocate only as
// they grow, never per request once warm.
#ifndef KAIO_RUNTIME_POOL_QUEUE_H_
#define KAIO_RUNTIME_POOL_QUEUE_H_

#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/slot.h"

namespace kaio::runtime {

class PoolQueue {
 public:
  static constexpr int kAnyWorker = -1;  // Push's lane_fd for work any worker may take
  static constexpr int kLaneTurn = 64;   // writes a lane's holder runs in a row while others wait
  // fds below this have their lane at lanes_[fd], kept when empty; the rest, in large_lanes_ while
  // held or ready. The map's insert and erase, one each per write that finds its lane empty (every
  // write at queue depth 1), made PoolQueue 409 of the 2,861 instructions of a signalled buffered
  // aio_write; with the vector, 324 of 2,763 (callgrind, tools/posix_sigbench.cc --rw=randwrite
  // --iodepth=1). 16 bytes a number, 1 MiB at most.
  static constexpr uint32_t kDirectLanes = 1 << 16;

  explicit PoolQueue(core::SlotTable& slots) : slots_(slots) {}

  struct Work {
    uint32_t index = core::SlotTable::kNoSlot;
    int lane_fd = kAnyWorker;  // >= 0: the caller holds this fd's lane until NextInLane says false
  };

  // Queues `index`: for any worker, or in `lane_fd`'s lane. True if it is work an idle worker may
  // take now (wake one); false if the lane's holder will run it (wake nobody).
  bool Push(uint32_t index, int lane_fd);
  // Takes the next work, the FIFO first, then the lane ready the longest. False if there is none.
  bool Take(Work* work);
  // The holder of `fd`'s lane finished one request. True with the lane's next in *index; false when
  // the lane is done (empty) or its turn is over (it waits at the back of the ready lanes).
  bool NextInLane(int fd, uint32_t* index);
  // Takes back what the last Push queued, when no worker can be had to run it (that Push returned
  // true, so the lane, if any, held only it).
  void RemoveLastPushed(uint32_t index, int lane_fd);
  // Nothing any worker could take (held lanes may still have writes: their holders run them).
  bool Empty() const { return any_.empty() && ready_.empty(); }

 private:
  struct Lane {
    uint32_t head = 0;  // index + 1 of the oldest queued write, 0 if none (links: Slot::pool_next)
    uint32_t tail = 0;
    int turn = 0;       // writes run in a row by the current holder
    bool held = false;  // a worker is running this lane's writes
  };

  // The lane of fd, made if it has none (the vector grows to the highest fd seen, not per request).
  Lane& LaneOf(int fd);
  // fd's lane has no writes and no holder: a large fd's is dropped, a small fd's left empty.
  void Forget(int fd);
  static bool Direct(int fd);  // fd's lane is in lanes_

  core::SlotTable& slots_;
  std::deque<uint32_t> any_;
  std::deque<int> ready_;  // fds whose lane has writes and no holder, oldest first
  std::vector<Lane> lanes_;                      // by fd, for fds below kDirectLanes
  absl::flat_hash_map<int, Lane> large_lanes_;  // only lanes that are held or ready
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_POOL_QUEUE_H_
