// PoolQueue on its own: which work a worker takes, when a push must wake one, and the lane's turn.
#include "runtime/pool_queue.h"

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"

namespace kaio::runtime {
namespace {

class PoolQueueTest : public ::testing::Test {
 protected:
  uint32_t NewIndex() {
    uint32_t index = slots_.Acquire();
    EXPECT_NE(index, core::SlotTable::kNoSlot);
    return index;
  }
  // Runs one worker's turn: what Take gives and, for a lane, every NextInLane after it.
  std::vector<uint32_t> OneTurn(int* lane_fd) {
    std::vector<uint32_t> ran;
    PoolQueue::Work work;
    if (!queue_.Take(&work)) return ran;
    *lane_fd = work.lane_fd;
    do {
      ran.push_back(work.index);
    } while (work.lane_fd != PoolQueue::kAnyWorker && queue_.NextInLane(work.lane_fd, &work.index));
    return ran;
  }

  core::SlotTable slots_{4096};
  PoolQueue queue_{slots_};
};

TEST_F(PoolQueueTest, AWriteBehindItsLanesQueuedOrRunningOneWakesNobody) {
  const uint32_t a = NewIndex(), b = NewIndex(), c = NewIndex();
  EXPECT_TRUE(queue_.Push(a, 7)) << "the lane had nothing: a worker must come";
  EXPECT_FALSE(queue_.Push(b, 7)) << "the lane is ready already";
  PoolQueue::Work work;
  ASSERT_TRUE(queue_.Take(&work));
  EXPECT_EQ(work.index, a);
  EXPECT_EQ(work.lane_fd, 7);
  EXPECT_FALSE(queue_.Push(c, 7)) << "the lane is held: its holder runs it";
  EXPECT_TRUE(queue_.Empty()) << "a held lane is nobody else's work";
  uint32_t next = 0;
  ASSERT_TRUE(queue_.NextInLane(7, &next));
  EXPECT_EQ(next, b);
  ASSERT_TRUE(queue_.NextInLane(7, &next));
  EXPECT_EQ(next, c);
  EXPECT_FALSE(queue_.NextInLane(7, &next)) << "drained";
  EXPECT_TRUE(queue_.Push(NewIndex(), 7)) << "a released lane needs a worker again";
}

TEST_F(PoolQueueTest, TwoFilesAreTwoLanesAndAnyWorkerWorkComesFirst) {
  const uint32_t w1 = NewIndex(), w2 = NewIndex(), read = NewIndex();
  EXPECT_TRUE(queue_.Push(w1, 3));
  EXPECT_TRUE(queue_.Push(w2, 4)) << "another fd's lane: another worker may run it meanwhile";
  EXPECT_TRUE(queue_.Push(read, PoolQueue::kAnyWorker));
  int lane = 0;
  EXPECT_EQ(OneTurn(&lane), std::vector<uint32_t>{read});
  EXPECT_EQ(lane, PoolQueue::kAnyWorker);
  EXPECT_EQ(OneTurn(&lane), std::vector<uint32_t>{w1});
  EXPECT_EQ(lane, 3);
  EXPECT_EQ(OneTurn(&lane), std::vector<uint32_t>{w2});
  EXPECT_EQ(lane, 4);
  EXPECT_TRUE(queue_.Empty());
}

TEST_F(PoolQueueTest, ALanesTurnEndsAfterKLaneTurnWritesAndItWaitsBehindTheOthers) {
  std::vector<uint32_t> busy;
  for (int i = 0; i < PoolQueue::kLaneTurn + 2; ++i) {
    busy.push_back(NewIndex());
    queue_.Push(busy.back(), 5);
  }
  const uint32_t other = NewIndex();
  queue_.Push(other, 6);
  int lane = 0;
  std::vector<uint32_t> first = OneTurn(&lane);
  EXPECT_EQ(lane, 5);
  EXPECT_EQ(first, std::vector<uint32_t>(busy.begin(), busy.begin() + PoolQueue::kLaneTurn)) << "FIFO, one turn";
  EXPECT_FALSE(queue_.Empty()) << "the rest of the lane is ready again";
  EXPECT_EQ(OneTurn(&lane), std::vector<uint32_t>{other}) << "the lane waiting longer goes first";
  EXPECT_EQ(OneTurn(&lane), std::vector<uint32_t>(busy.begin() + PoolQueue::kLaneTurn, busy.end()));
  EXPECT_TRUE(queue_.Empty());
}

TEST_F(PoolQueueTest, RemoveLastPushedTakesBackWhatNoWorkerCanRun) {
  const uint32_t w = NewIndex(), r = NewIndex();
  ASSERT_TRUE(queue_.Push(w, 9));
  queue_.RemoveLastPushed(w, 9);
  ASSERT_TRUE(queue_.Push(r, PoolQueue::kAnyWorker));
  queue_.RemoveLastPushed(r, PoolQueue::kAnyWorker);
  EXPECT_TRUE(queue_.Empty());
  EXPECT_TRUE(queue_.Push(w, 9)) << "the lane was forgotten, not left held or ready";
}

TEST_F(PoolQueueTest, LanesOfLargeAndNegativeFdsKeepTheSameRulesAsSmallOnes) {
  // Small fds' lanes live in a vector, the rest in a map: the same turns either side, and a negative
  // fd (a write the kernel fails with EBADF) must not index the vector.
  for (const int fd : {2, static_cast<int>(PoolQueue::kDirectLanes) - 1, static_cast<int>(PoolQueue::kDirectLanes),
                       1 << 30, -7}) {
    SCOPED_TRACE(fd);
    const uint32_t a = NewIndex(), b = NewIndex();
    EXPECT_TRUE(queue_.Push(a, fd));
    EXPECT_FALSE(queue_.Push(b, fd));
    int lane = 0;
    EXPECT_EQ(OneTurn(&lane), (std::vector<uint32_t>{a, b}));
    EXPECT_EQ(lane, fd);
    EXPECT_TRUE(queue_.Empty());
    const uint32_t c = NewIndex();
    EXPECT_TRUE(queue_.Push(c, fd)) << "the drained lane was released";
    queue_.RemoveLastPushed(c, fd);
    EXPECT_TRUE(queue_.Empty());
  }
}

}  // namespace
}  // namespace kaio::runtime
