// The transitions of a request's life, as changes of its slot's state word (core/slot.h): the only
// code outside the slot table's free stack (core/slot.cc) that writes Slot::word, and the three
// ways to look at it (Look, LookOwn, LookAfterArming), through which the engine, its clients and
// core/mailbox.cc read it. (Tests, the fuzzer and the benchmark plant and inspect states directly.) Each hop calls
// the transition it may make; the memory-ordering reason is here, once per kind of transition.
//
//   kFree --MarkClaimed--> kClaimed --Publish--> kQueued | kPoolQueued        (the requester)
//   kQueued --Move--> kInKernel | kPoolQueued | (lane) kPoolQueued            (the submitter)
//   kQueued --Move--> kStreamTrying --Publish--> kQueued | kPoolQueued         (the submitter's ReadNow)
//   kInKernel --Move--> kQueued | kPoolQueued                                 (the reaper, a refusal)
//   kPoolQueued --Move--> kPoolRunning (a worker) | kStreamTrying (the lanes)
//   kStreamTrying --Publish--> kPoolQueued | kPoolRunning                     (the lanes)
//   kQueued | kPoolQueued --Move--> kCancelledQueued                          (Cancel)
//   any live state --MarkCompleted--> kCompleted                              (Engine::Complete)
//   kCompleted --MarkReturned--> kReturned                                    (the owner's Return)
//   kCompleted | kReturned --> kFree (next generation)                        (SlotTable::Free)
//
// Every transition keeps the word's generation, so a caller holding an old word (another request
// of the same slot) fails its compare-and-swap instead of moving someone else's request.
#ifndef KAIO_CORE_REQUEST_H_
#define KAIO_CORE_REQUEST_H_

#include <atomic>
#include <cstdint>

#include "core/slot.h"

namespace kaio::core {

// Looking at a request's word without moving it (the other hops read the state word only
// through these, as they write it only through the transitions below).
// acquire: whoever looks sees what the hop that last moved the request published with it (the
// request, flags, result); each caller says at the site which release it pairs with.
inline uint64_t Look(const Slot& slot) { return slot.word.load(std::memory_order_acquire); }
// relaxed: for a slot the caller alone holds (claimed, or a completed one its sink took), whose
// word is the one the caller itself stored or was handed; or for a first look that a
// compare-and-swap checks again (Engine::Complete).
inline uint64_t LookOwn(const Slot& slot) { return slot.word.load(std::memory_order_relaxed); }
// seq_cst: a waiter that armed its wake-up and then re-checks whether a request finished pairs
// with MarkCompleted's seq_cst CAS: either it sees kCompleted or the completer sees it armed.
inline uint64_t LookAfterArming(const Slot& slot) { return slot.word.load(std::memory_order_seq_cst); }

// kFree -> kClaimed: the caller has just taken the slot off the free stack and owns it alone;
// nothing is published yet (Publish does that), so relaxed. Returns the new word.
inline uint64_t MarkClaimed(Slot& slot) {
  const uint64_t word = PackWord(WordGeneration(slot.word.load(std::memory_order_relaxed)), SlotState::kClaimed);
  slot.word.store(word, std::memory_order_relaxed);
  return word;
}

// From a state only the caller can leave (kClaimed, kStreamTrying) to `to`, publishing what the
// caller wrote into the slot (the request, flags, partial): release, paired with the acquire of whoever
// takes the request next (the submitter, a worker, the lanes, a canceller).
inline void Publish(Slot& slot, uint64_t word, SlotState to) {
  slot.word.store(PackWord(WordGeneration(word), to), std::memory_order_release);
}

// From the state in `word` (the caller's last look) to `to`, if nobody moved the request since: a
// hop taking it, handing it on, or a canceller taking it out of a queue. acq_rel: on success the
// caller sees what the previous holder published, and whoever takes it next sees what the caller
// wrote before; on failure `word` is the current word (acquire: its state's data is visible).
inline bool Move(Slot& slot, uint64_t& word, SlotState to) {
  return slot.word.compare_exchange_strong(word, PackWord(WordGeneration(word), to), std::memory_order_acq_rel,
                                           std::memory_order_acquire);
}
// The same, allowed to fail spuriously: for a caller that loops anyway.
inline bool MoveWeak(Slot& slot, uint64_t& word, SlotState to) {
  return slot.word.compare_exchange_weak(word, PackWord(WordGeneration(word), to), std::memory_order_acq_rel,
                                         std::memory_order_acquire);
}

// The state in `word` -> kCompleted: the one transition every request makes exactly once (only one
// caller's compare-and-swap from a given live word succeeds). seq_cst: a waiter that arms its
// mailbox and then re-checks states (Requester::WaitAll, core/mailbox.h) cannot miss it. The
// result and everything the request wrote are stored before. On failure `word` is reloaded
// (relaxed: the caller only learns it lost).
inline bool MarkCompleted(Slot& slot, uint64_t& word) {
  return slot.word.compare_exchange_strong(word, PackWord(WordGeneration(word), SlotState::kCompleted),
                                           std::memory_order_seq_cst, std::memory_order_relaxed);
}

// kCompleted -> kReturned, by the owner's Return(): only the owner moves a completed request, so a
// store; release, paired with the acquire of Error() on any thread and of the mailbox's drain.
inline void MarkReturned(Slot& slot, uint64_t word) {
  slot.word.store(PackWord(WordGeneration(word), SlotState::kReturned), std::memory_order_release);
}

}  // namespace kaio::core

#endif  // KAIO_CORE_REQUEST_H_
