#include "core/slot.h"

#include <algorithm>

namespace kaio::core {

SlotTable::SlotTable(uint32_t max_slots)
    : max_slots_(max_slots),
      max_chunks_((max_slots + kChunkSize - 1) / kChunkSize),
      chunks_(new std::atomic<Slot*>[max_chunks_]) {
  // relaxed: the table is not shared yet.
  for (uint32_t i = 0; i < max_chunks_; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

SlotTable::~SlotTable() {
  // relaxed: the table is shared no more (its owner is destroying it).
  for (uint32_t i = 0; i < max_chunks_; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
}

uint32_t SlotTable::TryPop() {
  // acquire: the pop must see the free_next the releasing thread wrote before its release CAS.
  uint64_t head = free_head_.load(std::memory_order_acquire);
  while (true) {
    uint32_t top = static_cast<uint32_t>(head);
    if (top == 0) return kNoSlot;
    uint32_t index = top - 1;
    // Relaxed: if another thread popped this slot meanwhile, the value may be stale, and the tagged
    // CAS below then fails.
    uint32_t next = at(index).free_next.load(std::memory_order_relaxed);
    uint64_t tag = (head >> 32) + 1;
    // acquire on success: take over the slot the releaser published; on failure too, since the
    // next try reads the new head's free_next.
    if (free_head_.compare_exchange_weak(head, (tag << 32) | next, std::memory_order_acquire,
                                         std::memory_order_acquire)) {
      return index;
    }
  }
}

uint32_t SlotTable::Acquire() {
  uint32_t index = TryPop();
  return index != kNoSlot ? index : Grow();
}

void SlotTable::Release(uint32_t index) {
  Slot& slot = at(index);
  // relaxed: the CAS below checks it, and nothing is read through it.
  uint64_t head = free_head_.load(std::memory_order_relaxed);
  while (true) {
    // relaxed: published by the release CAS below.
    slot.free_next.store(static_cast<uint32_t>(head), std::memory_order_relaxed);
    // release: publishes free_next and everything done to the slot before it was freed. Relaxed on
    // failure: the new head is only linked to.
    if (free_head_.compare_exchange_weak(head, (head & ~uint64_t{0xffffffff}) | (index + 1),
                                         std::memory_order_release, std::memory_order_relaxed)) {
      return;
    }
  }
}

bool SlotTable::Free(uint32_t index, uint64_t expected) {
  uint64_t freed = PackWord(NextGeneration(WordGeneration(expected)), SlotState::kFree);
  // acq_rel: acquire what the last user of the slot wrote; release our reads before the next user.
  // Relaxed on failure: nothing changed, and the caller only learns that.
  if (!at(index).word.compare_exchange_strong(expected, freed, std::memory_order_acq_rel,
                                              std::memory_order_relaxed)) {
    return false;
  }
  Release(index);
  return true;
}

uint32_t SlotTable::Grow() {
  std::lock_guard<std::mutex> lock(grow_mu_);
  // Another thread may have grown the table, or released slots, while we waited for the lock.
  if (uint32_t index = TryPop(); index != kNoSlot) return index;
  // relaxed: allocated_ is written only under grow_mu_, which we hold.
  uint32_t base = allocated_.load(std::memory_order_relaxed);
  uint32_t chunk = base >> kChunkBits;
  if (base >= max_slots_ || chunk >= max_chunks_) return kNoSlot;
  // The last chunk may be only partly usable: exactly max_slots slots ever exist.
  uint32_t usable = std::min(kChunkSize, max_slots_ - base);
  Slot* slots = new Slot[kChunkSize];
  for (uint32_t i = 0; i < kChunkSize; ++i) {
    // relaxed: the chunk is published by the release store below.
    slots[i].word.store(PackWord(1, SlotState::kFree), std::memory_order_relaxed);
  }
  // release: a thread that sees the new allocated_ count (acquire) also sees the initialised chunk.
  chunks_[chunk].store(slots, std::memory_order_release);
  allocated_.store(base + usable, std::memory_order_release);
  // Keep the first slot for the caller; the others go to the free stack.
  for (uint32_t i = usable - 1; i >= 1; --i) Release(base + i);
  return base;
}

}  // namespace kaio::core
