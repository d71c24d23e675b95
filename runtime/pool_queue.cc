#include "runtime/pool_queue.h"

#include <algorithm>

namespace kaio::runtime {

// Unsigned, so that a negative fd (a write the kernel will fail with EBADF) is a large one.
bool PoolQueue::Direct(int fd) { return static_cast<uint32_t>(fd) < kDirectLanes; }

PoolQueue::Lane& PoolQueue::LaneOf(int fd) {
  if (!Direct(fd)) return large_lanes_[fd];
  if (static_cast<size_t>(fd) >= lanes_.size()) lanes_.resize(static_cast<size_t>(fd) + 1);
  return lanes_[fd];
}

void PoolQueue::Forget(int fd) {
  if (!Direct(fd)) {
    large_lanes_.erase(fd);
  } else {
    lanes_[fd] = Lane{};
  }
}

bool PoolQueue::Push(uint32_t index, int lane_fd) {
  if (lane_fd == kAnyWorker) {
    any_.push_back(index);
    return true;
  }
  slots_.at(index).pool_next = 0;
  Lane& lane = LaneOf(lane_fd);
  if (lane.tail != 0) {
    slots_.at(lane.tail - 1).pool_next = index + 1;
  } else {
    lane.head = index + 1;
  }
  lane.tail = index + 1;
  // A lane with writes is held or ready; one that had none is neither, and becomes ready now.
  if (lane.held || lane.head != index + 1) return false;
  ready_.push_back(lane_fd);
  return true;
}

bool PoolQueue::Take(Work* work) {
  if (!any_.empty()) {
    work->index = any_.front();
    work->lane_fd = kAnyWorker;
    any_.pop_front();
    return true;
  }
  if (ready_.empty()) return false;
  const int fd = ready_.front();
  ready_.pop_front();
  Lane& lane = LaneOf(fd);
  lane.held = true;
  lane.turn = 0;
  work->lane_fd = fd;
  return NextInLane(fd, &work->index);  // a ready lane has a write
}

bool PoolQueue::NextInLane(int fd, uint32_t* index) {
  Lane& lane = LaneOf(fd);  // held, so it exists
  if (lane.head == 0) {
    Forget(fd);
    return false;
  }
  if (lane.turn == kLaneTurn) {
    lane.held = false;
    ready_.push_back(fd);
    return false;
  }
  ++lane.turn;
  *index = lane.head - 1;
  lane.head = slots_.at(*index).pool_next;
  if (lane.head == 0) lane.tail = 0;
  return true;
}

void PoolQueue::RemoveLastPushed(uint32_t index, int lane_fd) {
  if (lane_fd == kAnyWorker) {
    any_.erase(std::find(any_.begin(), any_.end(), index));
    return;
  }
  Forget(lane_fd);
  ready_.erase(std::find(ready_.begin(), ready_.end(), lane_fd));
}

}  // namespace kaio::runtime
