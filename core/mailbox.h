// Mailbox: the per-requester inbox of completed requests, and the way its owner sleeps.
//
// Threading: Deliver() may be called from any thread (reaper, submitter, fallback workers,
// cancellers) and is lock-free: one CAS to push, plus an eventfd write only when the owner is
// armed (sleeping in a Wait, or waiting in epoll on the notify fd). Every other method belongs to
// the single owner thread.
//
// Shape: producers push onto an intrusive LIFO stack (Slot::mailbox_next); the owner takes the whole
// stack with one exchange and appends it, reversed, to a private FIFO list (Slot::local_*), so
// completions come out in the order they were delivered.
//
// Memory ordering: the push CAS is seq_cst, and so are the owner's arm store and its re-check of
// the stack (or of slot states); producers check `armed_` after pushing. With both sides seq_cst,
// either the owner sees the completion before it sleeps or the producer sees it armed and wakes it:
// no lost wake-up.
//
// Naps: while the pool runs a request, an owner may arm "except for the pool" (ArmExceptPool)
// and nap (Nap), looking at the stack by itself when the nap ends: a fallback worker's delivery then
// writes no eventfd, since waking a sleeping thread is the dearest part of a pool write. Every
// other producer (the reaper, the submitter, a canceller) still wakes it. The owner re-checks the
// stack after every arm or change of arm, so a producer that saw the old state and did not wake
// it has pushed before that re-check.
//
// Lifetime: a producer may still be inside Deliver() (checking armed_) after the owner has seen
// its completion, so mailboxes are recycled by the Service, never freed while it runs.
#ifndef KAIO_CORE_MAILBOX_H_
#define KAIO_CORE_MAILBOX_H_

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/slot.h"
#include "core/syscalls.h"

namespace kaio::core {

class Mailbox : public CompletionSink {
 public:
  static absl::StatusOr<std::unique_ptr<Mailbox>> Create(SlotTable& slots, Syscalls& sys);
  ~Mailbox() override;

  void Deliver(uint32_t index) override;

  // ---- Owner thread only. ----
  // Moves everything delivered so far into the local list; frees slots already returned.
  void Drain();
  // The oldest completion in the local list (left in place), or SlotTable::kNoSlot.
  uint32_t PeekLocal() const { return local_head_ == 0 ? SlotTable::kNoSlot : local_head_ - 1; }
  void Unlink(uint32_t index);
  // seq_cst: the owner's re-check after Arm() (see Memory ordering above).
  bool SharedEmpty() const { return shared_head_.load(std::memory_order_seq_cst) == 0; }
  bool LocalEmpty() const { return local_head_ == 0; }

  // Sleeping. Arm() before the final re-check of the condition, then Sleep(); Disarm() when done.
  void Arm() { ArmAs(kArmed); }
  // As Arm(), but fallback workers' deliveries leave the owner asleep: only for a Nap.
  void ArmExceptPool() { ArmAs(kArmedExceptPool); }
  // Sleeps until woken or `nap` has passed (microseconds are honoured); true if woken.
  // Both sleeps may watch one more fd, `also`: its own requests' completions that the kernel
  // announces straight to the owner (Client's reap fd). The sleep ends when it becomes readable too;
  // `also.ready` then says so (the owner reads it). An `also` the program closed (POLLNVAL) is left
  // out of that sleep, and `also.closed` says so.
  struct AlsoWatch {
    int fd = -1;
    bool ready = false;
    bool closed = false;
  };
  bool Nap(absl::Duration nap, AlsoWatch* also = nullptr);
  void Disarm();
  // Sleeps until woken or the deadline passes; false on timeout.
  bool Sleep(absl::Time deadline, AlsoWatch* also = nullptr);
  // Wakes the owner as a producer would (makes the notify fd readable) if it is armed.
  void SelfWake();
  // Called once by each fallback pool worker thread: its deliveries are the pool's (see Naps).
  static void MarkPoolThread() { pool_thread_ = true; }
  // Forgets the previous owner's counts; only when nothing is outstanding.
  void ResetForNewOwner();

  // The eventfd that becomes readable when a completion arrives while armed.
  int event_fd() const { return event_fd_; }

 private:
  Mailbox(SlotTable& slots, Syscalls& sys, int event_fd)
      : slots_(slots), sys_(sys), event_fd_(event_fd) {}
  enum ArmState : uint8_t { kDisarmed = 0, kArmed = 1, kArmedExceptPool = 2 };
  void ArmAs(ArmState state);
  void ConsumeWakeToken();
  static thread_local bool pool_thread_;

  SlotTable& slots_;
  Syscalls& sys_;
  const int event_fd_;
  alignas(64) std::atomic<uint32_t> shared_head_{0};  // index + 1 of the newest delivery
  std::atomic<uint8_t> armed_{kDisarmed};
  // Owner-private.
  alignas(64) uint32_t local_head_ = 0;
  uint32_t local_tail_ = 0;
  bool armed_by_owner_ = false;
};

}  // namespace kaio::core

#endif  // KAIO_CORE_MAILBOX_H_
