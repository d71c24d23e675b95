// Deliberately broken builds, to prove that the stress suite catches the bugs it exists for.
//
// A normal build compiles none of this: PlantedBug() is a constant false and every call site folds
// away. `bazel build --define=kaio_planted_bug=NAME //stress:kaio_stress` (see
// stress/planted_bugs_check.sh, run by CI) compiles kaio with one bug planted, which fires on about
// one request in a thousand:
//   double_completion  a completion is handed to the requester twice (Requester::Poll/Wait)
//   lost_completion    the reaper drops a kernel event instead of routing it to its mailbox
//   leaked_slot        a consumed completion's slot is never given back to the slab
//   misdirected_write  a write goes to the neighbouring 4 KiB block (right byte count, wrong place)
// The check builds each, runs kaio_stress and requires it to fail with the matching diagnosis.
#ifndef KAIO_CORE_PLANTED_BUG_H_
#define KAIO_CORE_PLANTED_BUG_H_

#include <atomic>
#include <cstdint>

namespace kaio::core {

enum class PlantedBugKind { kDoubleCompletion = 1, kLostCompletion, kLeakedSlot, kMisdirectedWrite };

#ifdef KAIO_PLANTED_BUG
// True about once in 1,000 calls for the planted kind (from the 500th call on, so a run has
// started in earnest), never for the others.
inline bool PlantedBug(PlantedBugKind kind) {
  if (static_cast<int>(kind) != KAIO_PLANTED_BUG) return false;
  static std::atomic<uint64_t> calls{0};
  // relaxed: only the count matters (which call misbehaves); nothing is published through it.
  return calls.fetch_add(1, std::memory_order_relaxed) % 1000 == 499;
}
#else
constexpr bool PlantedBug(PlantedBugKind) { return false; }
#endif

}  // namespace kaio::core

#endif  // KAIO_CORE_PLANTED_BUG_H_
