#include "core/mailbox.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/request.h"

namespace kaio::core {

absl::StatusOr<std::unique_ptr<Mailbox>> Mailbox::Create(SlotTable& slots, Syscalls& sys) {
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return absl::ErrnoToStatus(errno, "kaio: eventfd for a requester's mailbox");
  return std::unique_ptr<Mailbox>(new Mailbox(slots, sys, fd));
}

thread_local bool Mailbox::pool_thread_ = false;

Mailbox::~Mailbox() { close(event_fd_); }

void Mailbox::Deliver(uint32_t index) {
  Slot& slot = slots_.at(index);
  // relaxed: the CAS below checks it, and nothing is read through it (it is only linked to).
  uint32_t head = shared_head_.load(std::memory_order_relaxed);
  do {
    slot.mailbox_next = head;
    // seq_cst: releases mailbox_next and the result to the owner, and orders the push before the
    // armed_ check below (see the header). Relaxed on failure: the new head is only linked to.
  } while (!shared_head_.compare_exchange_weak(head, index + 1, std::memory_order_seq_cst,
                                               std::memory_order_relaxed));
  // After the push, so whoever sees `delivered` match `accepted` finds every slot in the stack;
  // seq_cst, because an owner waiting for that match arms first and re-checks it.
  delivered.fetch_add(1, std::memory_order_seq_cst);
  // seq_cst, both: the producer's side of the wake-up handshake (see the header), after the push. A
  // plain load first, so a completion for an owner that is not armed costs no RMW; the exchange picks
  // the one producer that writes the eventfd.
  const uint8_t armed = armed_.load(std::memory_order_seq_cst);
  // A napping owner looks by itself: this load came before its next arm and re-check (seq_cst), and
  // the push before this load, so the re-check finds it.
  if (armed == kDisarmed || (armed == kArmedExceptPool && pool_thread_)) return;
  if (armed_.exchange(kDisarmed, std::memory_order_seq_cst) != kDisarmed) {
    // Only the producer that disarmed writes, so one wake-up per sleep, however many completions.
    int rc = sys_.EventFdWrite(event_fd_, 1);
    if (rc < 0 && rc != -EAGAIN) {
      // An eventfd write fails only with a full counter (EAGAIN: already readable) or a bad fd,
      // which would mean the mailbox was destroyed under us: a bug worth stopping for.
      std::fprintf(stderr, "kaio: mailbox eventfd write failed: %d\n", rc);
      std::abort();
    }
  }
}

void Mailbox::Drain() {
  // acquire: see every pushed slot's mailbox_next and result.
  uint32_t top = shared_head_.exchange(0, std::memory_order_acquire);
  // Reverse the LIFO chain into delivery order.
  uint32_t first = 0;
  while (top != 0) {
    Slot& slot = slots_.at(top - 1);
    uint32_t next = slot.mailbox_next;
    slot.mailbox_next = first;
    first = top;
    top = next;
  }
  while (first != 0) {
    uint32_t index = first - 1;
    Slot& slot = slots_.at(index);
    first = slot.mailbox_next;
    // acquire: pairs with MarkReturned's release (core/request.h), though that is the owner's own
    // store, made on this thread.
    uint64_t word = Look(slot);
    if (WordState(word) == SlotState::kReturned) {
      slots_.Free(index, word);  // the owner already took the result
      continue;
    }
    slot.local_prev = local_tail_;
    slot.local_next = 0;
    slot.in_local_list = true;
    if (local_tail_ != 0) {
      slots_.at(local_tail_ - 1).local_next = index + 1;
    } else {
      local_head_ = index + 1;
    }
    local_tail_ = index + 1;
  }
}

void Mailbox::Unlink(uint32_t index) {
  Slot& slot = slots_.at(index);
  if (!slot.in_local_list) return;
  if (slot.local_prev != 0) {
    slots_.at(slot.local_prev - 1).local_next = slot.local_next;
  } else {
    local_head_ = slot.local_next;
  }
  if (slot.local_next != 0) {
    slots_.at(slot.local_next - 1).local_prev = slot.local_prev;
  } else {
    local_tail_ = slot.local_prev;
  }
  slot.in_local_list = false;
  slot.local_prev = slot.local_next = 0;
}

void Mailbox::ConsumeWakeToken() {
  // A producer disarmed us, so it has written or is about to write the eventfd: wait for it, so a
  // stale token cannot make a later sleep return early (or leave the notify fd readable).
  while (true) {
    uint64_t value;
    int rc = sys_.EventFdRead(event_fd_, &value);
    if (rc >= 0) return;
    if (rc == -EAGAIN) {
      struct pollfd pfd = {event_fd_, POLLIN, 0};
      poll(&pfd, 1, -1);
    } else if (rc != -EINTR) {
      std::fprintf(stderr, "kaio: mailbox eventfd read failed: %d\n", rc);
      std::abort();
    }
  }
}

void Mailbox::ArmAs(ArmState state) {
  if (armed_by_owner_) {
    // Still armed: keep it, in the state asked for. Disarmed by a producer: take its token, then
    // arm again. seq_cst, as the arm store: not kDisarmed means that arm is still in force (no
    // producer took it); the CAS, so a producer's exchange in between is not overwritten.
    uint8_t current = armed_.load(std::memory_order_seq_cst);
    while (current != kDisarmed) {
      if (current == state ||
          armed_.compare_exchange_weak(current, state, std::memory_order_seq_cst, std::memory_order_seq_cst)) {
        return;
      }
    }
    ConsumeWakeToken();
  }
  armed_.store(state, std::memory_order_seq_cst);  // seq_cst: before the caller's re-check
  armed_by_owner_ = true;
}

void Mailbox::Disarm() {
  if (!armed_by_owner_) return;
  armed_by_owner_ = false;
  // seq_cst RMW: exactly one of the owner and the producers takes the flag; if a producer took it,
  // its eventfd write is on its way.
  if (armed_.exchange(kDisarmed, std::memory_order_seq_cst) == kDisarmed) ConsumeWakeToken();
}

void Mailbox::SelfWake() {
  // seq_cst, both: as a producer's in Deliver().
  if (armed_.load(std::memory_order_seq_cst) != kDisarmed &&
      armed_.exchange(kDisarmed, std::memory_order_seq_cst) != kDisarmed) {
    sys_.EventFdWrite(event_fd_, 1);
  }
}

void Mailbox::ResetForNewOwner() {
  Disarm();
  // relaxed: nothing is outstanding (no completer touches the counts), and the new owner gets the
  // mailbox through the Service's mutex, which orders these stores before its first use.
  accepted.store(0, std::memory_order_relaxed);
  delivered.store(0, std::memory_order_relaxed);
  local_head_ = local_tail_ = 0;
}

namespace {

// The poll set of a sleep: the mailbox's eventfd, and `also` if there is one. Returns how many fds.
nfds_t SleepSet(int event_fd, Mailbox::AlsoWatch* also, struct pollfd (&pfds)[2]) {
  pfds[0] = {event_fd, POLLIN, 0};
  if (also == nullptr || also->fd < 0) return 1;
  also->ready = false;
  pfds[1] = {also->fd, POLLIN, 0};
  return 2;
}

// After a poll that returned > 0: true if the sleep is over (something readable); false if the only
// event was a closed `also`, which is then left out (pfds[1].fd = -1: poll skips it).
bool SleepOver(nfds_t nfds, struct pollfd (&pfds)[2], Mailbox::AlsoWatch* also) {
  if (nfds == 2) {
    if (pfds[1].revents & POLLNVAL) {
      also->closed = true;
      pfds[1].fd = -1;
    } else if (pfds[1].revents != 0) {
      also->ready = true;
    }
  }
  return pfds[0].revents != 0 || (nfds == 2 && also->ready);
}

}  // namespace

bool Mailbox::Sleep(absl::Time deadline, AlsoWatch* also) {
  struct pollfd pfds[2];
  const nfds_t nfds = SleepSet(event_fd_, also, pfds);
  while (true) {
    int timeout_ms = -1;
    if (deadline != absl::InfiniteFuture()) {
      absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return false;
      timeout_ms = static_cast<int>(absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1))));
    }
    int rc = poll(pfds, nfds, timeout_ms);
    if (rc > 0 && SleepOver(nfds, pfds, also)) return true;
    if (rc == 0 && deadline != absl::InfiniteFuture() && absl::Now() >= deadline) return false;
    // EINTR, an early timeout or a closed `also`: go round.
  }
}

bool Mailbox::Nap(absl::Duration nap, AlsoWatch* also) {
  struct pollfd pfds[2];
  const nfds_t nfds = SleepSet(event_fd_, also, pfds);
  const struct timespec span = absl::ToTimespec(std::max(nap, absl::ZeroDuration()));
  // ppoll, not poll: poll's milliseconds would turn a 50 us nap into 1 ms. EINTR or the timeout
  // alike end the nap; the caller looks at the stack either way.
  return ppoll(pfds, nfds, &span, nullptr) > 0 && SleepOver(nfds, pfds, also);
}

}  // namespace kaio::core
