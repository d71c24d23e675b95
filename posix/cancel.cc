// posix/cancel.cc: aio_cancel's side of State (see state.h): a request still queued in the engine
// is cancelled, and its ECANCELED published, by whichever of aio_cancel and Deliver wins a CAS on
// its record's state; the slot is freed by whichever of the two finishes last.
#include <aio.h>
#include <errno.h>
#include <sched.h>

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "kaio/types.h"
#include "posix/aiocb_words.h"
#include "posix/orderer.h"
#include "posix/state.h"

namespace kaio::posix {

void State::WaitSettled(Record rec, uint32_t generation) const {
  // The slot reached kCompleted, so its Deliver is running now on the thread that completed it (or a
  // canceller that won is publishing): this wait is a few hundred instructions at most.
  for (int spins = 0;; ++spins) {
    // acquire: pairs with the release of kFinal (after Publish) or of a later generation's Prepare
    // (after this one's slot was freed): on kSettled the caller's LoadError finds the result.
    uint64_t state = rec.state().load(std::memory_order_acquire);
    if (static_cast<uint32_t>(state >> kStateShift) != generation || (state & kFinal)) return;
    if (spins > 100) sched_yield();
  }
}

CancelOutcome State::CancelRequest(uint32_t index, uint32_t generation, struct aiocb* cb) {
  // The index is the aiocb's, from the program's memory: checked against the slots that exist.
  core::ClientRecord* client = engine_.ClientRecordOf(index);
  if (client == nullptr) return CancelOutcome::kAllDone;
  const Record rec(*client);
  // acquire: pairs with Prepare's release store of `state` (this generation's, or a later one's).
  uint64_t state = rec.state().load(std::memory_order_acquire);
  if (static_cast<uint32_t>(state >> kStateShift) != generation || (state & kFinal)) return CancelOutcome::kRetry;
  absl::StatusOr<CancelResult> engine_result = engine_.Cancel(index, generation);
  if (!engine_result.ok()) return CancelOutcome::kRetry;  // stale, or still being launched
  switch (*engine_result) {
    case CancelResult::kNotCanceled:
      return CancelOutcome::kNotCanceled;
    case CancelResult::kAllDone:
      WaitSettled(rec, generation);
      return CancelOutcome::kRetry;
    case CancelResult::kCanceled:
      break;
  }
  // acq_rel on success, for its acquire half: the CAS reads Prepare's release store (this
  // generation, no bit set), so the fields read below are this request's. Its release half orders
  // nothing Deliver needs (kCancelDone's does, below). acquire on failure is more than needed: the
  // value is unused and WaitSettled loads the state again.
  uint64_t expected = uint64_t{generation} << kStateShift;
  if (rec.state().compare_exchange_strong(expected, expected | kCancelWon, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
    // Ours: publish ECANCELED now (the engine may hand the slot back much later, when its holder
    // gets to it), notify, and leave the slot to whichever of us and Deliver finishes last.
    // Ordered by the CAS's acquire (the target and the plain part).
    struct aiocb* target = rec.cb();
    RecordPlain plain = rec.plain();
    Notification& n = plain.notification;
    int64_t result = -ECANCELED;
    ClaimNotifyThread(&n, &result);
    if (n.signal_fails) result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
    Publish(target, result);
    // kFinal, acq_rel for its release half: after Publish, so a thread that acquires kFinal (Done,
    // the scans, another canceller) finds ECANCELED in the aiocb. kCancelDone, acq_rel for both
    // halves: if Deliver came first (kDelivered in prev), its release lets this thread free the
    // slot after Deliver's reads of it; if Deliver comes later, its acquire of this release lets it
    // free the slot after everything this thread did to the record.
    rec.state().fetch_or(kFinal, std::memory_order_acq_rel);
    uint64_t prev = rec.state().fetch_or(kCancelDone, std::memory_order_acq_rel);
    if (prev & kDelivered) engine_.FreeDelivered(index, generation);
    CountCancelled();
    AfterCompletion(n, plain.group);
    return CancelOutcome::kCanceled;
  }
  // Deliver (or another canceller) got there first; it publishes ECANCELED momentarily.
  WaitSettled(rec, generation);
  if (cb == nullptr) return CancelOutcome::kCanceled;
  // A cancelled request reports ECANCELED, or EINVAL when its signal number is bad (glibc's answer,
  // see Notification::signal_fails; the record may be another request's by now, so not read).
  const int error = LoadError(cb);
  return error == ECANCELED || error == EINVAL ? CancelOutcome::kCanceled : CancelOutcome::kAllDone;
}

int State::CancelAiocb(struct aiocb* cb) {
  for (int round = 0;; ++round) {
    if (LoadError(cb) != EINPROGRESS) return AIO_ALLDONE;
    uint64_t ticket = LoadTicket(cb);
    if (ticket == kTicketPending) {
      if (orderer_->CancelPending(cb)) return AIO_CANCELED;
      continue;  // released meanwhile: its ticket is a slot's now
    }
    if (ticket != 0) {
      switch (CancelRequest(core::TicketIndex(ticket), core::TicketGeneration(ticket), cb)) {
        case CancelOutcome::kCanceled:
          return AIO_CANCELED;
        case CancelOutcome::kNotCanceled:
          return AIO_NOTCANCELED;
        case CancelOutcome::kAllDone:
          return AIO_ALLDONE;
        case CancelOutcome::kRetry:
          break;
      }
    }
    if (round > 100) sched_yield();
  }
}

int State::CancelFd(int fd) {
  bool any_cancelled = orderer_->CancelFd(fd) > 0;
  bool any_running = false;
  const uint32_t count = engine_.slot_count();
  for (uint32_t index = 0; index < count; ++index) {
    const Record rec(*engine_.ClientRecordOf(index));
    // acquire: pairs with Prepare's release store of `state`, so fd (relaxed, below) is this
    // generation's or a later one's; CancelRequest checks the generation again.
    uint64_t state = rec.state().load(std::memory_order_acquire);
    if (state == 0 || (state & kFinal)) continue;
    if (rec.fd() != fd) continue;
    switch (CancelRequest(index, static_cast<uint32_t>(state >> kStateShift), nullptr)) {
      case CancelOutcome::kCanceled:
        any_cancelled = true;
        break;
      case CancelOutcome::kNotCanceled:
        any_running = true;
        break;
      case CancelOutcome::kAllDone:
      case CancelOutcome::kRetry:  // finished (and maybe reused) meanwhile
        break;
    }
  }
  if (any_running) return AIO_NOTCANCELED;
  return any_cancelled ? AIO_CANCELED : AIO_ALLDONE;
}

}  // namespace kaio::posix
