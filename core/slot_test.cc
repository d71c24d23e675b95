// core/slot.h on its own: the packed state word and tickets, and SlotTable's contract (Acquire gives
// a free slot or kNoSlot past max_slots, Free moves a slot to the next generation only from the
// expected word, chunks grow as needed and never move).
#include "core/slot.h"

#include <atomic>
#include <cstdint>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace kaio::core {
namespace {

constexpr SlotState kAllStates[] = {
    SlotState::kFree,       SlotState::kClaimed,     SlotState::kQueued,       SlotState::kCancelledQueued,
    SlotState::kInKernel,   SlotState::kPoolQueued,  SlotState::kPoolRunning,  SlotState::kStreamTrying,
    SlotState::kCompleted,  SlotState::kReturned,
};

// ---------------------------------------------------------------- the word and the ticket

static_assert(WordGeneration(PackWord(7, SlotState::kInKernel)) == 7);
static_assert(WordState(PackWord(7, SlotState::kInKernel)) == SlotState::kInKernel);

TEST(SlotWord, PackWordRoundTripsEveryStateAndGeneration) {
  for (uint32_t generation : {1u, 2u, 0x12345678u, UINT32_MAX - 1, UINT32_MAX}) {
    for (SlotState state : kAllStates) {
      const uint64_t word = PackWord(generation, state);
      EXPECT_EQ(WordGeneration(word), generation) << "state " << static_cast<uint32_t>(state);
      EXPECT_EQ(WordState(word), state) << "generation " << generation;
    }
  }
}

TEST(SlotWord, WordsDifferWhenGenerationOrStateDiffers) {
  // A stale ticket's CAS must fail on a reused slot: the same state in another generation is
  // another word, and so is another state in the same generation.
  std::set<uint64_t> words;
  for (uint32_t generation : {1u, 2u, UINT32_MAX}) {
    for (SlotState state : kAllStates) words.insert(PackWord(generation, state));
  }
  EXPECT_EQ(words.size(), 3u * (sizeof(kAllStates) / sizeof(kAllStates[0])));
}

TEST(SlotTicket, PackTicketRoundTripsAndIsNeverZero) {
  for (uint32_t generation : {1u, 2u, UINT32_MAX}) {
    for (uint32_t index : {0u, 1u, SlotTable::kChunkSize, SlotTable::kNoSlot - 1}) {
      const uint64_t ticket = PackTicket(generation, index);
      EXPECT_EQ(TicketGeneration(ticket), generation);
      EXPECT_EQ(TicketIndex(ticket), index);
      EXPECT_NE(ticket, 0u) << "generations start at 1, so no ticket is 0";
    }
  }
}

TEST(SlotTicket, NextGenerationCountsUpAndSkipsZeroWhenItWraps) {
  EXPECT_EQ(NextGeneration(1), 2u);
  EXPECT_EQ(NextGeneration(41), 42u);
  EXPECT_EQ(NextGeneration(UINT32_MAX - 1), UINT32_MAX);
  EXPECT_EQ(NextGeneration(UINT32_MAX), 1u) << "generation 0 would make ticket 0 possible";
}

// ---------------------------------------------------------------- the table

TEST(SlotTable, StartsEmptyAndAFirstAcquireGrowsOneChunkOfFreeSlots) {
  SlotTable table(4 * SlotTable::kChunkSize);
  EXPECT_EQ(table.allocated(), 0u);
  EXPECT_FALSE(table.Contains(0));
  const uint32_t index = table.Acquire();
  ASSERT_NE(index, SlotTable::kNoSlot);
  EXPECT_EQ(table.allocated(), SlotTable::kChunkSize);
  EXPECT_TRUE(table.Contains(index));
  EXPECT_TRUE(table.Contains(SlotTable::kChunkSize - 1));
  EXPECT_FALSE(table.Contains(SlotTable::kChunkSize));
  // Every new slot is free, in generation 1 (so its first ticket is not 0).
  for (uint32_t i = 0; i < SlotTable::kChunkSize; ++i) {
    ASSERT_EQ(table.at(i).word.load(), PackWord(1, SlotState::kFree)) << "slot " << i;
  }
}

TEST(SlotTable, AcquireGivesDistinctSlotsUpToMaxSlotsThenNoSlot) {
  // Not a whole number of chunks: exactly max_slots slots ever exist.
  constexpr uint32_t kMax = SlotTable::kChunkSize + 100;
  SlotTable table(kMax);
  std::set<uint32_t> seen;
  for (uint32_t i = 0; i < kMax; ++i) {
    const uint32_t index = table.Acquire();
    ASSERT_NE(index, SlotTable::kNoSlot) << "only " << i << " of " << kMax << " slots";
    ASSERT_LT(index, kMax);
    ASSERT_TRUE(seen.insert(index).second) << "slot " << index << " handed out twice";
    EXPECT_EQ(WordState(table.at(index).word.load()), SlotState::kFree);
  }
  EXPECT_EQ(table.Acquire(), SlotTable::kNoSlot);
  EXPECT_EQ(table.Acquire(), SlotTable::kNoSlot) << "a refused Acquire must not change the table";
  EXPECT_EQ(table.allocated(), kMax);
}

TEST(SlotTable, GrowingAddsAChunkAndNeverMovesTheSlotsThereAlready) {
  SlotTable table(3 * SlotTable::kChunkSize);
  std::vector<uint32_t> first_chunk;
  for (uint32_t i = 0; i < SlotTable::kChunkSize; ++i) first_chunk.push_back(table.Acquire());
  const Slot* before = &table.at(first_chunk.front());
  EXPECT_EQ(table.allocated(), SlotTable::kChunkSize);
  const uint32_t next = table.Acquire();  // the first chunk is all taken: grows
  ASSERT_NE(next, SlotTable::kNoSlot);
  EXPECT_GE(next, SlotTable::kChunkSize);
  EXPECT_EQ(table.allocated(), 2 * SlotTable::kChunkSize);
  EXPECT_EQ(&table.at(first_chunk.front()), before) << "a slot moved when the table grew";
  EXPECT_NE(&table.at(next), before);
}

TEST(SlotTable, AReleasedSlotIsAcquiredAgain) {
  SlotTable table(1);
  const uint32_t index = table.Acquire();
  ASSERT_NE(index, SlotTable::kNoSlot);
  ASSERT_EQ(table.Acquire(), SlotTable::kNoSlot);
  table.Release(index);
  EXPECT_EQ(table.Acquire(), index);
  EXPECT_EQ(table.Acquire(), SlotTable::kNoSlot);
}

TEST(SlotTable, FreeFromTheExpectedWordAdvancesTheGenerationAndReturnsTheSlot) {
  SlotTable table(1);
  const uint32_t index = table.Acquire();
  ASSERT_NE(index, SlotTable::kNoSlot);
  Slot& slot = table.at(index);
  uint32_t generation = WordGeneration(slot.word.load());
  for (int reuse = 0; reuse < 3; ++reuse) {
    const uint64_t completed = PackWord(generation, SlotState::kCompleted);
    slot.word.store(completed);
    ASSERT_TRUE(table.Free(index, completed));
    EXPECT_EQ(slot.word.load(), PackWord(generation + 1, SlotState::kFree)) << "reuse " << reuse;
    // Back on the free stack: the only slot there is, so Acquire gives it again.
    ASSERT_EQ(table.Acquire(), index) << "reuse " << reuse;
    generation = WordGeneration(slot.word.load());
  }
  EXPECT_EQ(generation, 4u);
}

TEST(SlotTable, FreeFromTheLastGenerationWrapsToOne) {
  SlotTable table(1);
  const uint32_t index = table.Acquire();
  const uint64_t returned = PackWord(UINT32_MAX, SlotState::kReturned);
  table.at(index).word.store(returned);
  ASSERT_TRUE(table.Free(index, returned));
  EXPECT_EQ(table.at(index).word.load(), PackWord(1, SlotState::kFree));
}

TEST(SlotTable, FreeFromAnyOtherWordChangesNothing) {
  SlotTable table(1);
  const uint32_t index = table.Acquire();
  ASSERT_NE(index, SlotTable::kNoSlot);
  Slot& slot = table.at(index);
  const uint64_t live = PackWord(5, SlotState::kCompleted);
  slot.word.store(live);
  // A stale ticket's generation, and the right generation in another state.
  EXPECT_FALSE(table.Free(index, PackWord(4, SlotState::kCompleted)));
  EXPECT_FALSE(table.Free(index, PackWord(5, SlotState::kReturned)));
  EXPECT_EQ(slot.word.load(), live);
  EXPECT_EQ(table.Acquire(), SlotTable::kNoSlot) << "a refused Free put the slot on the free stack";
}

// Threads acquire and release slots as fast as they can, each marking a slot as its own while it
// holds it: no slot may ever be held by two threads at once (the free stack's ABA tag at work), and
// the table never grows past what the threads can hold at once.
TEST(SlotTable, ConcurrentAcquireAndReleaseNeverShareASlot) {
  constexpr int kThreads = 4, kRounds = 20000, kHeld = 3;
  constexpr uint32_t kMax = 2 * SlotTable::kChunkSize;
  SlotTable table(kMax);
  std::unique_ptr<std::atomic<int>[]> owner(new std::atomic<int>[kMax]);
  for (uint32_t i = 0; i < kMax; ++i) owner[i].store(-1);
  std::atomic<int> shared{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      uint32_t held[kHeld];
      for (int round = 0; round < kRounds; ++round) {
        for (uint32_t& index : held) {
          index = table.Acquire();
          if (index == SlotTable::kNoSlot) {
            refused++;
            return;
          }
          int expected = -1;
          if (!owner[index].compare_exchange_strong(expected, t)) shared++;
        }
        for (uint32_t index : held) {
          int expected = t;
          if (!owner[index].compare_exchange_strong(expected, -1)) shared++;
          table.Release(index);
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(shared.load(), 0) << "a slot was handed to two threads at once";
  EXPECT_EQ(refused.load(), 0);
  EXPECT_EQ(table.allocated(), SlotTable::kChunkSize) << "12 slots held at once need one chunk";
}

TEST(SlotTable, AClientRecordSurvivesFreeAndTheSlotsNextClaim) {
  // A client (the POSIX layer) keeps its record of a request in the slot and reads its words while
  // the slot is reused: neither Free nor Acquire may clear or move them.
  SlotTable table(4);
  const uint32_t index = table.Acquire();
  ASSERT_NE(index, SlotTable::kNoSlot);
  ClientRecord& client = table.at(index).client;
  for (size_t i = 0; i < ClientRecord::kWords; ++i) {
    EXPECT_EQ(client.words[i].load(), 0u) << "a slot's client words start at 0";
    client.words[i].store(0x1000 + i);
  }
  for (size_t i = 0; i < ClientRecord::kBytes; ++i) client.bytes[i] = static_cast<unsigned char>(i + 1);
  const uint64_t word = table.at(index).word.load();
  ASSERT_TRUE(table.Free(index, word));
  EXPECT_EQ(table.Acquire(), index) << "the free stack gives the slot just freed";
  EXPECT_EQ(&table.at(index).client, &client) << "slots never move";
  for (size_t i = 0; i < ClientRecord::kWords; ++i) EXPECT_EQ(client.words[i].load(), 0x1000 + i) << i;
  for (size_t i = 0; i < ClientRecord::kBytes; ++i) EXPECT_EQ(client.bytes[i], i + 1) << i;
}

}  // namespace
}  // namespace kaio::core
