// core/mailbox.h on its own: completions come out of Drain in the order they were delivered, slots
// already returned are freed instead of listed, the eventfd is written once per sleep and only while
// the owner is armed (while it naps, not for the pool's deliveries), and many producers lose
// nothing.
#include "core/mailbox.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "core/slot.h"
#include "core/syscalls.h"
#include "gtest/gtest.h"

namespace kaio::core {
namespace {

// The real eventfd calls, counted.
class CountingSyscalls : public Syscalls {
 public:
  int EventFdWrite(int fd, uint64_t value) override {
    writes.fetch_add(1);
    return Syscalls::EventFdWrite(fd, value);
  }
  int EventFdRead(int fd, uint64_t* value) override {
    reads.fetch_add(1);
    return Syscalls::EventFdRead(fd, value);
  }
  std::atomic<int> writes{0};
  std::atomic<int> reads{0};
};

// True if `fd` is readable right now.
bool Readable(int fd) {
  struct pollfd pfd = {fd, POLLIN, 0};
  return poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN) != 0;
}

class MailboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto created = Mailbox::Create(slots_, sys_);
    ASSERT_TRUE(created.ok()) << created.status();
    mailbox_ = *std::move(created);
  }

  // A slot as a completer hands it over: completed, in generation 1.
  uint32_t CompletedSlot() {
    const uint32_t index = slots_.Acquire();
    EXPECT_NE(index, SlotTable::kNoSlot);
    slots_.at(index).word.store(PackWord(1, SlotState::kCompleted));
    return index;
  }

  // Takes the local list apart, oldest first.
  std::vector<uint32_t> TakeLocal() {
    std::vector<uint32_t> order;
    for (uint32_t index = mailbox_->PeekLocal(); index != SlotTable::kNoSlot; index = mailbox_->PeekLocal()) {
      order.push_back(index);
      mailbox_->Unlink(index);
    }
    return order;
  }

  SlotTable slots_{4 * SlotTable::kChunkSize};
  CountingSyscalls sys_;
  std::unique_ptr<Mailbox> mailbox_;
};

TEST_F(MailboxTest, ANewMailboxIsEmptyAndItsFdQuiet) {
  EXPECT_GE(mailbox_->event_fd(), 0);
  EXPECT_TRUE(mailbox_->SharedEmpty());
  EXPECT_TRUE(mailbox_->LocalEmpty());
  mailbox_->Drain();  // draining nothing is fine
  EXPECT_EQ(mailbox_->PeekLocal(), SlotTable::kNoSlot);
  EXPECT_TRUE(mailbox_->LocalEmpty());
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
  EXPECT_EQ(mailbox_->delivered.load(), 0u);
}

TEST_F(MailboxTest, DrainListsCompletionsInDeliveryOrder) {
  const std::vector<uint32_t> delivered = {CompletedSlot(), CompletedSlot(), CompletedSlot(), CompletedSlot()};
  for (uint32_t index : delivered) mailbox_->Deliver(index);
  EXPECT_FALSE(mailbox_->SharedEmpty());
  EXPECT_TRUE(mailbox_->LocalEmpty()) << "nothing is local before the owner drains";
  EXPECT_EQ(mailbox_->delivered.load(), 4u);
  mailbox_->Drain();
  EXPECT_TRUE(mailbox_->SharedEmpty());
  EXPECT_EQ(TakeLocal(), delivered);
  EXPECT_TRUE(mailbox_->LocalEmpty());
}

TEST_F(MailboxTest, LaterDeliveriesGoAfterThoseAlreadyDrained) {
  const uint32_t a = CompletedSlot(), b = CompletedSlot(), c = CompletedSlot();
  mailbox_->Deliver(a);
  mailbox_->Deliver(b);
  mailbox_->Drain();
  mailbox_->Deliver(c);
  mailbox_->Drain();
  EXPECT_EQ(TakeLocal(), (std::vector<uint32_t>{a, b, c}));
}

TEST_F(MailboxTest, UnlinkFromTheMiddleKeepsTheOrderOfTheRest) {
  const uint32_t a = CompletedSlot(), b = CompletedSlot(), c = CompletedSlot();
  for (uint32_t index : {a, b, c}) mailbox_->Deliver(index);
  mailbox_->Drain();
  mailbox_->Unlink(b);  // as WaitAll takes the one it waited for
  mailbox_->Unlink(b);  // not in the list any more: nothing happens
  EXPECT_EQ(TakeLocal(), (std::vector<uint32_t>{a, c}));
}

TEST_F(MailboxTest, DrainFreesSlotsAlreadyReturnedInsteadOfListingThem) {
  const uint32_t kept = CompletedSlot(), returned = CompletedSlot();
  mailbox_->Deliver(kept);
  mailbox_->Deliver(returned);
  // The owner took this one's result through Return() before draining it.
  slots_.at(returned).word.store(PackWord(1, SlotState::kReturned));
  mailbox_->Drain();
  EXPECT_EQ(TakeLocal(), std::vector<uint32_t>{kept});
  EXPECT_EQ(slots_.at(returned).word.load(), PackWord(2, SlotState::kFree)) << "freed in the next generation";
  EXPECT_EQ(slots_.at(kept).word.load(), PackWord(1, SlotState::kCompleted)) << "a listed slot is left alone";
}

TEST_F(MailboxTest, ADeliveryWhileUnarmedWritesNoEventfd) {
  mailbox_->Deliver(CompletedSlot());
  EXPECT_EQ(sys_.writes.load(), 0);
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
}

TEST_F(MailboxTest, ADeliveryWhileArmedMakesTheFdReadableOncePerSleep) {
  mailbox_->Arm();
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
  for (int i = 0; i < 3; ++i) mailbox_->Deliver(CompletedSlot());
  EXPECT_TRUE(Readable(mailbox_->event_fd()));
  EXPECT_EQ(sys_.writes.load(), 1) << "one wake-up per sleep, however many completions";
  EXPECT_TRUE(mailbox_->Sleep(absl::Now() + absl::Seconds(20))) << "woken, so Sleep returns at once";
  // The producer disarmed the mailbox; Disarm takes its token, so the fd is quiet again.
  mailbox_->Disarm();
  EXPECT_EQ(sys_.reads.load(), 1);
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
  // A new sleep gets a new wake-up.
  mailbox_->Arm();
  mailbox_->Deliver(CompletedSlot());
  EXPECT_EQ(sys_.writes.load(), 2);
  mailbox_->Disarm();
  mailbox_->Drain();
  EXPECT_EQ(TakeLocal().size(), 4u);
}

TEST_F(MailboxTest, ArmingAgainAfterAWakeUpTakesTheOldToken) {
  mailbox_->Arm();
  mailbox_->Deliver(CompletedSlot());
  ASSERT_TRUE(Readable(mailbox_->event_fd()));
  mailbox_->Arm();  // the owner loops round without Disarm: the stale token must not stay
  EXPECT_FALSE(Readable(mailbox_->event_fd())) << "a stale token would end the next sleep at once";
  EXPECT_FALSE(mailbox_->Sleep(absl::Now() + absl::Milliseconds(20)));
  mailbox_->Disarm();
}

TEST_F(MailboxTest, SleepTimesOutWhenNothingArrives) {
  mailbox_->Arm();
  const absl::Time start = absl::Now();
  EXPECT_FALSE(mailbox_->Sleep(start + absl::Milliseconds(50)));
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  mailbox_->Disarm();  // still armed: no token to take
  EXPECT_EQ(sys_.reads.load(), 0);
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
}

// A client's reap fd (runtime/client.cc): the kernel writes it for the owner's own requests, so a
// sleep must end on it as on a delivery, and say which of the two it was.
TEST_F(MailboxTest, ASleepAlsoEndsWhenTheWatchedFdBecomesReadable) {
  const int other = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(other, 0);
  Mailbox::AlsoWatch also{other};
  mailbox_->Arm();
  EXPECT_FALSE(mailbox_->Sleep(absl::Now() + absl::Milliseconds(20), &also)) << "neither fd is readable";
  EXPECT_FALSE(also.ready);
  const uint64_t one = 1;
  ASSERT_EQ(write(other, &one, sizeof one), static_cast<ssize_t>(sizeof one));
  EXPECT_TRUE(mailbox_->Sleep(absl::Now() + absl::Seconds(20), &also)) << "woken by the watched fd";
  EXPECT_TRUE(also.ready);
  EXPECT_TRUE(mailbox_->Nap(absl::Seconds(20), &also)) << "a nap too";
  EXPECT_TRUE(also.ready);
  uint64_t count;
  ASSERT_EQ(read(other, &count, sizeof count), static_cast<ssize_t>(sizeof count));
  mailbox_->Deliver(CompletedSlot());
  EXPECT_TRUE(mailbox_->Sleep(absl::Now() + absl::Seconds(20), &also)) << "a delivery still wakes it";
  EXPECT_FALSE(also.ready) << "and the watched fd is not said to be ready";
  EXPECT_FALSE(also.closed);
  mailbox_->Disarm();
  mailbox_->Drain();
  EXPECT_EQ(TakeLocal().size(), 1u);
  close(other);
}

TEST_F(MailboxTest, AWatchedFdTheProgramClosedEndsNoSleep) {
  const int other = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  ASSERT_GE(other, 0);
  close(other);  // poll says POLLNVAL for it at once, every time
  Mailbox::AlsoWatch also{other};
  mailbox_->Arm();
  const absl::Time start = absl::Now();
  EXPECT_FALSE(mailbox_->Sleep(start + absl::Milliseconds(50), &also)) << "it sleeps until the deadline";
  EXPECT_GE(absl::Now() - start, absl::Milliseconds(50));
  EXPECT_TRUE(also.closed) << "and says the fd is gone";
  EXPECT_FALSE(also.ready);
  mailbox_->Disarm();
}

TEST_F(MailboxTest, SelfWakeWakesOnlyAnArmedOwner) {
  mailbox_->SelfWake();
  EXPECT_FALSE(Readable(mailbox_->event_fd())) << "nobody is asleep";
  mailbox_->Arm();
  mailbox_->SelfWake();
  EXPECT_TRUE(Readable(mailbox_->event_fd()));
  EXPECT_TRUE(mailbox_->Sleep(absl::Now() + absl::Seconds(20)));
  mailbox_->Disarm();
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
}

TEST_F(MailboxTest, ANappingOwnerIsWokenByTheKernelsDeliveriesButNotThePools) {
  mailbox_->ArmExceptPool();
  std::thread pool_worker([this] {
    Mailbox::MarkPoolThread();
    mailbox_->Deliver(CompletedSlot());
  });
  pool_worker.join();
  EXPECT_EQ(sys_.writes.load(), 0) << "a pool delivery to a napping owner writes no eventfd";
  EXPECT_FALSE(mailbox_->SharedEmpty()) << "but it is in the stack for the owner's own look";
  EXPECT_FALSE(mailbox_->Nap(absl::Microseconds(50))) << "the nap ends by its time";
  mailbox_->Deliver(CompletedSlot());  // this thread is no pool worker: the reaper, say
  EXPECT_EQ(sys_.writes.load(), 1);
  EXPECT_TRUE(mailbox_->Nap(absl::Seconds(20))) << "woken at once";
  mailbox_->Disarm();
  EXPECT_FALSE(Readable(mailbox_->event_fd())) << "Disarm took the token";
  mailbox_->Drain();
  EXPECT_EQ(TakeLocal().size(), 2u);
}

TEST_F(MailboxTest, ArmingFullyAfterANapMakesThePoolWakeTheOwnerAgain) {
  mailbox_->ArmExceptPool();
  mailbox_->Arm();  // still armed, now for everyone (no token to take: nobody disarmed us)
  EXPECT_EQ(sys_.reads.load(), 0);
  std::thread pool_worker([this] {
    Mailbox::MarkPoolThread();
    mailbox_->Deliver(CompletedSlot());
  });
  pool_worker.join();
  EXPECT_EQ(sys_.writes.load(), 1);
  EXPECT_TRUE(mailbox_->Sleep(absl::Now() + absl::Seconds(20)));
  mailbox_->ArmExceptPool();  // after a wake-up: takes the token first
  EXPECT_FALSE(Readable(mailbox_->event_fd()));
  mailbox_->Disarm();
}

// Producers on several threads deliver at once while the owner sleeps and drains as a Requester's
// Wait does (arm, re-check, sleep). Every completion arrives exactly once, each producer's in the
// order it delivered them, and the owner is never left asleep with completions in the stack (the
// deadline turns a lost wake-up into a failure, not a hang).
// Half the producers are pool workers, and the owner alternates between sleeping (fully armed)
// and napping (armed except for the pool), as Client::Wait does while the pool runs requests.
class MailboxProducersTest : public MailboxTest, public ::testing::WithParamInterface<bool> {};

TEST_P(MailboxProducersTest, ManyProducersLoseNothingAndKeepEachProducersOrder) {
  const bool naps = GetParam();
  constexpr int kProducers = 4, kEach = 1000;
  std::vector<std::vector<uint32_t>> mine(kProducers);
  std::vector<int> producer_of(4 * SlotTable::kChunkSize, -1);  // the table's max_slots
  for (int p = 0; p < kProducers; ++p) {
    for (int i = 0; i < kEach; ++i) {
      const uint32_t index = CompletedSlot();
      mine[p].push_back(index);
      producer_of[index] = p;
    }
  }
  std::atomic<int> ready{0};
  std::vector<std::thread> producers;
  for (int p = 0; p < kProducers; ++p) {
    producers.emplace_back([&, p] {
      if (naps && p % 2 == 0) Mailbox::MarkPoolThread();
      ready++;
      while (ready.load() < kProducers) std::this_thread::yield();  // start together: the most overlap
      for (uint32_t index : mine[p]) mailbox_->Deliver(index);
    });
  }
  std::vector<uint32_t> got;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  bool timed_out = false;
  int round = 0;
  while (got.size() < static_cast<size_t>(kProducers * kEach)) {
    mailbox_->Drain();
    if (mailbox_->LocalEmpty()) {
      const bool nap = naps && ++round % 2 == 0;
      if (nap) {
        mailbox_->ArmExceptPool();
      } else {
        mailbox_->Arm();
      }
      // The re-check after arming: a producer that pushed before seeing armed_ is seen here.
      if (mailbox_->SharedEmpty()) {
        if (nap) {
          mailbox_->Nap(absl::Microseconds(50));
        } else if (!mailbox_->Sleep(deadline)) {
          timed_out = true;
          break;
        }
      }
      if (round % 3 == 0) mailbox_->Disarm();  // and sometimes loop round still armed, as Wait does
      continue;
    }
    for (uint32_t index : TakeLocal()) got.push_back(index);
  }
  mailbox_->Disarm();
  for (std::thread& t : producers) t.join();
  ASSERT_FALSE(timed_out) << "the owner slept through " << kProducers * kEach - got.size() << " completions";
  ASSERT_EQ(got.size(), static_cast<size_t>(kProducers * kEach));
  EXPECT_EQ(mailbox_->delivered.load(), static_cast<uint64_t>(kProducers * kEach));
  std::vector<size_t> next(kProducers, 0);
  std::vector<bool> seen(producer_of.size(), false);
  for (uint32_t index : got) {
    ASSERT_LT(index, producer_of.size());
    ASSERT_FALSE(seen[index]) << "slot " << index << " delivered twice";
    seen[index] = true;
    const int p = producer_of[index];
    ASSERT_GE(p, 0) << "slot " << index << " was never delivered";
    ASSERT_EQ(index, mine[p][next[p]]) << "producer " << p << "'s completions out of order";
    ++next[p];
  }
}

INSTANTIATE_TEST_SUITE_P(SleepsOnly, MailboxProducersTest, ::testing::Values(false));
INSTANTIATE_TEST_SUITE_P(SleepsAndNaps, MailboxProducersTest, ::testing::Values(true));

}  // namespace
}  // namespace kaio::core
