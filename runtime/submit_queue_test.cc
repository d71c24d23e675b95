// SubmitQueue on its own: the sleep protocol (a sleep is refused after an Announce since the
// sequence was read; one eventfd write per sleep however many producers wake it) and the drains.
#include "runtime/submit_queue.h"

#include <sys/eventfd.h>

#include <cstdint>
#include <vector>

#include "core/syscalls.h"
#include "gtest/gtest.h"

namespace kaio::runtime {
namespace {

class CountingSyscalls : public core::Syscalls {
 public:
  int EventFdWrite(int fd, uint64_t value) override {
    ++writes;
    return core::Syscalls::EventFdWrite(fd, value);
  }
  int writes = 0;
};

class SubmitQueueTest : public ::testing::Test {
 protected:
  CountingSyscalls sys_;
  SubmitQueue queue_{sys_, eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
};

TEST_F(SubmitQueueTest, ASleepIsRefusedAfterAnAnnounceSinceTheSequenceWasRead) {
  const uint64_t seq = queue_.Sequence();
  EXPECT_FALSE(queue_.Announce()) << "nobody sleeps yet";
  EXPECT_FALSE(queue_.TrySleep(seq)) << "work was announced after the submitter looked";
  EXPECT_TRUE(queue_.TrySleep(queue_.Sequence()));
  EXPECT_TRUE(queue_.Announce()) << "a producer after the sleep sees the bit";
}

TEST_F(SubmitQueueTest, OneEventfdWritePerSleepHoweverManyProducersWake) {
  ASSERT_TRUE(queue_.TrySleep(queue_.Sequence()));
  for (int producer = 0; producer < 5; ++producer) {
    EXPECT_EQ(queue_.Announce(), producer == 0) << "the first one's WakeOnce clears the bit";
    queue_.WakeOnce();
  }
  EXPECT_EQ(sys_.writes, 1) << "only the one that clears the sleep bit writes";
  queue_.EndSleep();
  queue_.WakeOnce();
  EXPECT_EQ(sys_.writes, 1) << "nobody sleeps: no write";
  // The write is seen by the next wait: it returns at once rather than at its deadline.
  queue_.WaitForWork(absl::InfiniteFuture());
}

TEST_F(SubmitQueueTest, DrainsTakeWhatWasPushedAndDrainFromOnlyThatProducers) {
  auto a = queue_.NewProducerToken();
  auto b = queue_.NewProducerToken();
  for (uint32_t i = 0; i < 3; ++i) ASSERT_TRUE(queue_.Push(*a, i));
  for (uint32_t i = 10; i < 12; ++i) ASSERT_TRUE(queue_.Push(*b, i));
  std::vector<uint32_t> out(8);
  ASSERT_EQ(queue_.DrainFrom(*b, out.data(), out.size()), 2u);
  EXPECT_EQ(out[0], 10u);
  EXPECT_EQ(out[1], 11u);
  auto consumer = queue_.NewConsumerToken();
  ASSERT_EQ(queue_.Drain(*consumer, out.data(), out.size()), 3u);
  EXPECT_EQ(out[0], 0u);
  EXPECT_EQ(out[2], 2u);
  EXPECT_EQ(queue_.Drain(*consumer, out.data(), out.size()), 0u);
}

}  // namespace
}  // namespace kaio::runtime
