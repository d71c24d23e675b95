// Engine, the hop between producers and the paths: which requests keep their call order (streams,
// O_APPEND) and go to a lane, and the per-fd bookkeeping that lets a lane run (see engine.h).
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

// ---------------------------------------------------------------- call order per fd

StreamLanes::Order Engine::DispatchOrder(core::Slot& slot, bool lone_may_go, KindCache* cache) {
  const int fd = slot.io.fd;
  const core::IoOp op = slot.io.op;
  auto classify = [&] {
    if (cache != nullptr && cache->fd == fd && cache->kind != StreamLanes::Kind::kUnknown) return cache->kind;
    const StreamLanes::Kind kind = StreamLanes::Classify(fd, slot.file_flags);
    if (cache != nullptr) *cache = KindCache{fd, kind};
    return kind;
  };
  if (fd < 0 || fd >= kFdKinds) return StreamLanes::OrderFor(classify(), op);  // untracked: always look
  if (slot.flags & core::kSlotCounted) return StreamLanes::Order::kFree;  // back from the kernel: decided
  FdOrderState& state = fd_order_[fd];
  const int dir = IsWrite(op) ? 1 : 0;
  slot.flags |= core::kSlotCounted;
  // seq_cst, with Uncount's CAS: read-modify-writes of one variable are totally ordered in any
  // order, so the request that ends a busy period and the one that starts the next agree on which
  // is which; the count itself needs no more than that (it publishes nothing).
  if (state.busy.fetch_add(1, std::memory_order_seq_cst) == 0 && lone_may_go) {
    // Nothing else of this fd in flight: no order to keep, so no look at the fd (a statx costs about
    // what the page-cache hit itself does: see kLoneRequestsSkipTheLook). Should it be a stream that would
    // block, the kernel says so (EAGAIN, a short write) and MoveToLane sends it to its lane then.
    // seq_cst: a lane's NothingOutside (store lane_waits, load outside) must see it.
    state.outside[dir].fetch_add(1, std::memory_order_seq_cst);
    slot.flags |= core::kSlotOutside;
    return StreamLanes::Order::kFree;
  }
  // Looked at once per batch, never remembered across batches: a cancelled request keeps its fd's
  // count until its holder completes it, while the program, told it is cancelled, may already have
  // closed the number and opened another kind of file on it (a kind remembered from the old file
  // would send a directory's read to a stream lane, to answer 0 instead of EISDIR).
  const StreamLanes::Order order = StreamLanes::OrderFor(classify(), op);
  if (order == StreamLanes::Order::kFree) {
    state.outside[dir].fetch_add(1, std::memory_order_seq_cst);  // seq_cst: as above
    slot.flags |= core::kSlotOutside;
  }
  return order;
}

bool Engine::NothingOutside(int fd, bool write) {
  if (fd < 0 || fd >= kFdKinds) return true;
  FdOrderState& state = fd_order_[fd];
  std::atomic<uint32_t>& outside = state.outside[write ? 1 : 0];
  // seq_cst: the fast path of the handshake below: a 0 here is the last LeaveOutside's decrement.
  if (outside.load(std::memory_order_seq_cst) == 0) return true;
  // seq_cst, a Dekker pair with Uncount (decrement `outside`, then read lane_waits): either it sees
  // our flag and calls Ready, or we see its decrement here.
  state.lane_waits.store(true, std::memory_order_seq_cst);
  return outside.load(std::memory_order_seq_cst) == 0;
}

void Engine::LeaveOutside(int fd, core::IoOp op) {
  FdOrderState& state = fd_order_[fd];
  // seq_cst: see NothingOutside.
  if (state.outside[IsWrite(op) ? 1 : 0].fetch_sub(1, std::memory_order_seq_cst) == 1 &&
      state.lane_waits.load(std::memory_order_seq_cst) && state.lane_waits.exchange(false, std::memory_order_seq_cst)) {
    lanes_->Ready(fd);
  }
}

void Engine::Uncount(int fd, core::IoOp op, uint32_t flags) {
  if (fd < 0 || fd >= kFdKinds || !(flags & core::kSlotCounted)) return;
  FdOrderState& state = fd_order_[fd];
  if (flags & core::kSlotOutside) LeaveOutside(fd, op);
  // seq_cst: see DispatchOrder (only the count is needed: nothing of the fd is remembered past a batch).
  state.busy.fetch_sub(1, std::memory_order_seq_cst);
}

bool Engine::MoveToLane(uint32_t index, uint64_t word) {
  core::Slot& slot = slots_.at(index);
  if (!(slot.flags & core::kSlotOutside)) return false;
  const int fd = slot.io.fd;
  const core::IoOp op = slot.io.op;
  const StreamLanes::Order order = StreamLanes::OrderFor(StreamLanes::Classify(fd), op);
  if (order == StreamLanes::Order::kFree) return false;
  if (order == StreamLanes::Order::kAppendPool && slot.partial > 0 && !IsVectored(op)) {
    // Its head runs in the pool, whose blocking call resumes a plain request from its description (a
    // vectored one skips `partial` bytes of its iovecs): advance it past what the kernel wrote, or
    // those bytes would be appended twice.
    slot.io.buf = static_cast<char*>(slot.io.buf) + slot.partial;
    slot.io.nbytes -= slot.partial;
    slot.io.offset += static_cast<long long>(slot.partial);
  }
  const uint32_t flags = slot.flags;
  slot.flags = (flags & ~core::kSlotOutside) | core::kSlotStream;
  // acq_rel: the lane that acquires kPoolQueued sees the request and flags.
  if (!core::Move(slot, word, SlotState::kPoolQueued)) {
    slot.flags = flags;
    return false;
  }
  // At the lane's head: every request of this fd that came after it is in the lane, waiting for it.
  if (lanes_->Push(index, order, /*front=*/true)) {
    // relaxed: a statistic.
    counters_.stream_requests.fetch_add(1, std::memory_order_relaxed);
  } else {
    // No thread for the lanes: EAGAIN, or, if the kernel already wrote part, that count (as
    // write(2) when it stops early).
    const int64_t result = slot.partial > 0 ? static_cast<int64_t>(slot.partial) : -EAGAIN;
    if (!Complete(index, SlotState::kPoolQueued, result)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
  }
  // No longer outside (after the push: the lane must find it there when it wakes). Its busy count
  // stays until it completes.
  LeaveOutside(fd, op);
  return true;
}

void Engine::PushToLane(uint32_t index, StreamLanes::Order order) {
  // relaxed: a statistic.
  counters_.stream_requests.fetch_add(1, std::memory_order_relaxed);
  if (lanes_->Push(index, order)) return;
  // No thread for the lanes: this request fails with EAGAIN (glibc's answer when it cannot start a
  // helper), unless it was cancelled meanwhile.
  if (!Complete(index, SlotState::kPoolQueued, -EAGAIN)) Complete(index, SlotState::kCancelledQueued, -ECANCELED);
}

}  // namespace kaio::runtime
