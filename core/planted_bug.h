// Deliberately broken builds, to prove that the stress suite catches the bugs it exists for.
//
// A normal build compiles none of this: PlantedBug() is a constant false and every call site folds
// away. `bazel build --define=kaio_planted_bug=NAME //stress:kaio_stress` (see
// stress/planted_bugs_check.sh, run by CI) compiles kaio with one bug planted, which fires on about
// one call in a thousand (a misdirected write on one write in a hundred: see PlantedBugPeriod):
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
// A misdirected write is seen only if the block it missed, or the one it hit, is read before the
// next write to it covers the evidence: one plant in a run can go unseen, so this kind fires ten
// times as often. The others fail the run on their first occurrence.
constexpr uint64_t PlantedBugPeriod(PlantedBugKind kind) {
  return kind == PlantedBugKind::kMisdirectedWrite ? 100 : 1000;
}

// True about once per PlantedBugPeriod calls for the planted kind (from half a period on, so a
// run has started in earnest), never for the others. Call it only where the bug would apply (for
// a misdirected write: on writes), so that every firing plants one.
inline bool PlantedBug(PlantedBugKind kind) {
  if (static_cast<int>(kind) != KAIO_PLANTED_BUG) return false;
  static std::atomic<uint64_t> calls{0};
  const uint64_t period = PlantedBugPeriod(kind);
  // relaxed: only the count matters (which call misbehaves); nothing is published through it.
  return calls.fetch_add(1, std::memory_order_relaxed) % period == period / 2 - 1;
}
#else
constexpr bool PlantedBug(PlantedBugKind) { return false; }
#endif

}  // namespace kaio::core

#endif  // KAIO_CORE_PLANTED_BUG_H_
