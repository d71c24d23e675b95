#include "runtime/client.h"

#include <errno.h>
#include <limits.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "core/mailbox.h"
#include "core/planted_bug.h"
#include "core/request.h"

namespace kaio::runtime {
namespace {

using core::SlotState;
using core::WordGeneration;
using core::WordState;

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

bool InFlight(SlotState state) {
  return state == SlotState::kClaimed || state == SlotState::kQueued || state == SlotState::kInKernel ||
         state == SlotState::kPoolQueued || state == SlotState::kPoolRunning || state == SlotState::kStreamTrying ||
         state == SlotState::kCancelledQueued;
}

absl::Status CheckRange(int fd, int64_t offset, uint64_t length) {
  if (fd < 0) return absl::InvalidArgumentError(absl::StrCat("kaio: negative fd ", fd, " (EBADF)"));
  if (offset < 0) return absl::InvalidArgumentError(absl::StrCat("kaio: negative offset ", offset));
  if (length > static_cast<uint64_t>(SSIZE_MAX) ||
      static_cast<uint64_t>(offset) > static_cast<uint64_t>(INT64_MAX) - length) {
    return absl::InvalidArgumentError(
        absl::StrCat("kaio: offset ", offset, " + length ", length, " overflows a file offset"));
  }
  return absl::OkStatus();
}

// The valid case without building a Status (CheckRange, with its StrCats, stays out of line: about 46
// instructions per request, 2.5% of a page-cache read's user-space work at iodepth 32).
inline bool RangeValid(int fd, int64_t offset, uint64_t length) {
  return fd >= 0 && offset >= 0 && length <= static_cast<uint64_t>(SSIZE_MAX) &&
         static_cast<uint64_t>(offset) <= static_cast<uint64_t>(INT64_MAX) - length;
}

absl::Status ShutDownError() {
  return absl::FailedPreconditionError("kaio: the service is shut down; it takes no new requests");
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(Engine& engine, MailboxPool& pool, bool inline_io) {
  absl::StatusOr<core::Mailbox*> mailbox = pool.Take();
  if (!mailbox.ok()) return mailbox.status();
  return std::unique_ptr<Client>(new Client(engine, pool, *mailbox, inline_io));
}

Client::Client(Engine& engine, MailboxPool& pool, core::Mailbox* mailbox, bool inline_io)
    : engine_(engine), pool_(pool), mailbox_(mailbox), token_(engine_.NewProducerToken()), inline_io_(inline_io) {
  engine_.RegisterSink(mailbox_);
  // Without one (EMFILE), our requests announce themselves on the engine's eventfd, as before.
  if (inline_io_) reap_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

Client::~Client() {
  Flush();
  // The buffers of outstanding requests are the caller's: wait until all of them are back.
  while (mailbox_->delivered.load(std::memory_order_seq_cst) != mailbox_->accepted.load(std::memory_order_relaxed)) {
    mailbox_->Arm();
    if (mailbox_->delivered.load(std::memory_order_seq_cst) == mailbox_->accepted.load(std::memory_order_relaxed)) break;
    Sleep(absl::InfiniteFuture());
  }
  mailbox_->Disarm();
  // Free every slot still holding an unconsumed completion.
  mailbox_->Drain();
  for (uint32_t index = mailbox_->PeekLocal(); index != kNoSlot; index = mailbox_->PeekLocal()) {
    mailbox_->Unlink(index);
    core::SlotTable& slots = engine_.slots();
    slots.Free(index, core::Look(slots.at(index)));
  }
  engine_.UnregisterSink(mailbox_);
  pool_.GiveBack(mailbox_);
  // Nothing of ours is in flight; the kernel holds its own reference to an eventfd it signals anyway.
  if (reap_fd_ >= 0) close(reap_fd_);
}

// ---------------------------------------------------------------- submission

absl::StatusOr<Ticket> Client::Submit(int fd, core::IoOp opcode, void* buf, uint64_t nbytes, int64_t offset,
                                         uint64_t tag) {
  if (!engine_.accepting()) return ShutDownError();
  uint32_t index = engine_.Claim(*mailbox_, tag);
  if (index == kNoSlot) {
    return absl::ResourceExhaustedError(
        absl::StrCat("kaio: ", engine_.options().max_requests,
                     " requests are alive (ServiceOptions::max_requests); consume completions or raise it"));
  }
  const uint64_t serial = NextSerial();
  const uint32_t generation = engine_.Describe(index, fd, opcode, buf, nbytes, offset, serial);
  // Count the request before the final check of accepting() (see Engine::accepting): a submit
  // racing Service::Shutdown() is either refused here or waited for by Shutdown. Single writer (this
  // thread): a load and a store, no read-modify-write.
  const uint64_t accepted = mailbox_->accepted.load(std::memory_order_relaxed);
  mailbox_->accepted.store(accepted + 1, std::memory_order_seq_cst);
  if (!engine_.accepting()) {
    mailbox_->accepted.store(accepted, std::memory_order_seq_cst);
    engine_.NotifyAcceptedChanged();
    engine_.Unclaim(index);
    return ShutDownError();
  }
  if (inline_io_) {
    if (engine_.EnqueueDeferred(*token_, index)) flush_pending_ = true;
  } else {
    engine_.Enqueue(*token_, index);
  }
  return Ticket(core::PackTicket(generation, index), serial);
}

uint64_t Client::NextSerial() {
  // Blocks of 2^20: one read-modify-write of the shared counter per million requests. Relaxed: the
  // numbers need only be distinct, which the RMW's atomicity gives. 2^44 blocks: never exhausted.
  static std::atomic<uint64_t> next_block{1};  // serial 0 is the empty ticket's
  constexpr int kBlockBits = 20;
  if (next_serial_ == serial_block_end_) {
    next_serial_ = next_block.fetch_add(1, std::memory_order_relaxed) << kBlockBits;
    serial_block_end_ = next_serial_ + (uint64_t{1} << kBlockBits);
  }
  return next_serial_++;
}

absl::StatusOr<Ticket> Client::Read(int fd, void* buf, size_t length, int64_t offset, uint64_t tag) {
  if (buf == nullptr && length > 0) return absl::InvalidArgumentError("kaio: Read into a null buffer");
  if (!RangeValid(fd, offset, length)) return CheckRange(fd, offset, length);
  return Submit(fd, core::IoOp::kRead, buf, length, offset, tag);
}

absl::StatusOr<Ticket> Client::Write(int fd, const void* buf, size_t length, int64_t offset, uint64_t tag) {
  if (buf == nullptr && length > 0) return absl::InvalidArgumentError("kaio: Write from a null buffer");
  if (!RangeValid(fd, offset, length)) return CheckRange(fd, offset, length);
  return Submit(fd, core::IoOp::kWrite, const_cast<void*>(buf), length, offset, tag);
}

absl::StatusOr<Ticket> Client::SubmitVector(int fd, core::IoOp opcode, const struct iovec* iov, int iovcnt,
                                               int64_t offset, uint64_t tag) {
  if (iovcnt < 0 || iovcnt > IOV_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("kaio: iovcnt ", iovcnt, " is outside [0, IOV_MAX]"));
  }
  if (iov == nullptr && iovcnt > 0) return absl::InvalidArgumentError("kaio: null iovec array");
  uint64_t total = 0;
  for (int i = 0; i < iovcnt; ++i) {
    if (iov[i].iov_base == nullptr && iov[i].iov_len > 0) {
      return absl::InvalidArgumentError(absl::StrCat("kaio: iovec ", i, " has a null base"));
    }
    if (iov[i].iov_len > static_cast<uint64_t>(SSIZE_MAX) - total) {
      return absl::InvalidArgumentError("kaio: iovec lengths overflow");
    }
    total += iov[i].iov_len;
  }
  if (!RangeValid(fd, offset, total)) return CheckRange(fd, offset, total);
  return Submit(fd, opcode, const_cast<struct iovec*>(iov), static_cast<uint64_t>(iovcnt), offset, tag);
}

absl::StatusOr<Ticket> Client::Readv(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag) {
  return SubmitVector(fd, core::IoOp::kReadv, iov, iovcnt, offset, tag);
}

absl::StatusOr<Ticket> Client::Writev(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag) {
  return SubmitVector(fd, core::IoOp::kWritev, iov, iovcnt, offset, tag);
}

absl::StatusOr<Ticket> Client::Fsync(int fd, uint64_t tag) {
  if (absl::Status s = CheckRange(fd, 0, 0); !s.ok()) return s;
  return Submit(fd, core::IoOp::kFsync, nullptr, 0, 0, tag);
}

absl::StatusOr<Ticket> Client::Fdatasync(int fd, uint64_t tag) {
  if (absl::Status s = CheckRange(fd, 0, 0); !s.ok()) return s;
  return Submit(fd, core::IoOp::kFdsync, nullptr, 0, 0, tag);
}

// ---------------------------------------------------------------- collecting

size_t Client::TakeLocal(absl::Span<Completion> out) {
  core::SlotTable& slots = engine_.slots();
  size_t n = 0;
  while (n < out.size()) {
    uint32_t index = mailbox_->PeekLocal();
    if (index == kNoSlot) break;
    mailbox_->Unlink(index);
    core::Slot& slot = slots.at(index);
    uint64_t word = core::Look(slot);
    out[n++] = Completion{Ticket(core::PackTicket(WordGeneration(word), index), slot.serial.load(std::memory_order_relaxed)), slot.tag,
                          slot.result.load(std::memory_order_relaxed)};
    if (core::PlantedBug(core::PlantedBugKind::kDoubleCompletion) && n < out.size()) out[n] = out[n - 1], ++n;
    if (core::PlantedBug(core::PlantedBugKind::kLeakedSlot)) continue;
    slots.Free(index, word);
  }
  return n;
}

void Client::Flush() {
  if (!flush_pending_) return;
  flush_pending_ = false;
  // In notify mode the program sleeps on the notify fd, never on reap_fd_.
  engine_.SubmitInline(*token_, notify_mode_ ? -1 : reap_fd_);
}

void Client::PumpInline() {
  if (!inline_io_) return;
  Flush();
  engine_.ReapInline();
}

size_t Client::Poll(absl::Span<Completion> out) {
  PumpInline();
  size_t n = TakeLocal(out);
  if (n < out.size()) {
    mailbox_->Drain();
    n += TakeLocal(out.subspan(n));
  }
  if (notify_mode_ && n < out.size()) {
    // Drained: re-arm the notify fd. Anything that arrived between the drain and the arm may not
    // have fired it, so fire it ourselves.
    mailbox_->Arm();
    if (!mailbox_->SharedEmpty()) mailbox_->SelfWake();
  }
  return n;
}

void Client::DisarmUnlessNotifying() {
  if (!notify_mode_) mailbox_->Disarm();
}

bool Client::Sleep(absl::Time deadline) {
  if (reap_fd_ < 0) return mailbox_->Sleep(deadline);
  core::Mailbox::AlsoWatch also{reap_fd_};
  const bool woken = mailbox_->Sleep(deadline, &also);
  ReapAfterKernelWake(also);
  return woken;
}

bool Client::Nap(absl::Duration nap) {
  if (reap_fd_ < 0) return mailbox_->Nap(nap);
  core::Mailbox::AlsoWatch also{reap_fd_};
  const bool woken = mailbox_->Nap(nap, &also);
  ReapAfterKernelWake(also);
  return woken;
}

void Client::ReapAfterKernelWake(core::Mailbox::AlsoWatch& also) {
  if (also.closed) {
    // The program closed our number: the engine's eventfd from now on (SubmitBatch repairs what is
    // sent meanwhile; what is in flight is the reaper's millisecond look's).
    reap_fd_ = -1;
    return;
  }
  if (!also.ready) return;
  // Disarmed first: our own reap delivers to our mailbox, and while armed each such delivery is an
  // eventfd write and its read. The caller arms again before it sleeps (every wait loop does).
  if (!notify_mode_) mailbox_->Disarm();
  // Read before reaping: a completion after the read makes it readable again. Only EAGAIN can
  // fail it (someone else's read), which leaves nothing to do but reap.
  uint64_t count;
  (void)!read(reap_fd_, &count, sizeof count);
  engine_.ReapInlineWaiting();
}

// While a fallback worker runs one of our buffered file writes, Wait naps instead of sleeping until
// woken: the worker's eventfd write that wakes a sleeping requester was 28 % of all samples of
// kaio_bench buffered randwrite qd32 (perf, BENCHMARKS.md session 13), the dearest part of a pool
// write on a VM, and such a write finishes in microseconds. The nap is armed "except for the pool":
// a completion from the kernel, a lane or a canceller still wakes it at once. Not in notify mode
// (the program waits on the notify fd itself).
size_t Client::Wait(absl::Span<Completion> out, size_t min_count, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  min_count = std::min(min_count, out.size());
  size_t n = Poll(out);
  int naps = 0;  // in a row, without a completion
  while (n < min_count) {
    // relaxed: a hint (core/slot.h).
    const bool nap = !notify_mode_ && naps < kMaxPoolNaps && mailbox_->pool_running.load(std::memory_order_relaxed) != 0;
    if (nap) {
      mailbox_->ArmExceptPool();
    } else {
      mailbox_->Arm();
    }
    if (mailbox_->SharedEmpty()) {
      if (nap) {
        ++naps;
        const absl::Duration left = deadline - absl::Now();
        if (left <= absl::ZeroDuration()) break;
        Nap(std::min(left, kPoolNap));
      } else if (!Sleep(deadline)) {
        break;
      }
    }
    const size_t got = Poll(out.subspan(n));
    if (got > 0) naps = 0;
    n += got;
  }
  DisarmUnlessNotifying();
  return n;
}

uint32_t Client::OwnSlot(Ticket ticket) const {
  uint32_t index = core::TicketIndex(ticket.slot());
  core::SlotTable& slots = engine_.slots();
  if (!ticket.valid() || !slots.Contains(index)) return kNoSlot;
  const core::Slot& slot = slots.at(index);
  uint64_t word = core::Look(slot);
  if (WordGeneration(word) != core::TicketGeneration(ticket.slot())) return kNoSlot;
  SlotState state = WordState(word);
  if (state == SlotState::kFree || state == SlotState::kReturned) return kNoSlot;
  if (slot.sink.load(std::memory_order_relaxed) != mailbox_) return kNoSlot;
  // The serial is process-unique: only our own request in this slot has it (a slot we claimed,
  // whose serial we wrote on this thread).
  if (slot.serial.load(std::memory_order_relaxed) != ticket.serial()) return kNoSlot;
  return index;
}

bool Client::Finished(Ticket ticket) const {
  const core::Slot& slot = engine_.slots().at(core::TicketIndex(ticket.slot()));
  // seq_cst: re-checked after Arm() (see core/mailbox.h).
  return !InFlight(WordState(core::LookAfterArming(slot)));
}

absl::Status Client::WaitAll(absl::Span<const Ticket> tickets, absl::Duration timeout) {
  for (size_t i = 0; i < tickets.size(); ++i) {
    if (OwnSlot(tickets[i]) == kNoSlot) {
      return absl::InvalidArgumentError(absl::StrCat("kaio: WaitAll: ticket ", i, " is stale or not this requester's (EINVAL)"));
    }
  }
  absl::Time deadline = absl::Now() + timeout;
  size_t next = 0;  // tickets before `next` are known to be finished
  while (true) {
    PumpInline();
    while (next < tickets.size() && Finished(tickets[next])) ++next;
    if (next == tickets.size()) break;
    mailbox_->Arm();
    if (Finished(tickets[next])) continue;
    if (!Sleep(deadline)) {
      DisarmUnlessNotifying();
      return absl::DeadlineExceededError(
          absl::StrCat("kaio: WaitAll timed out with ", tickets.size() - next, " of ", tickets.size(), " requests running (EAGAIN)"));
    }
  }
  DisarmUnlessNotifying();
  return absl::OkStatus();
}

absl::StatusOr<size_t> Client::WaitAny(absl::Span<const Ticket> tickets, absl::Duration timeout) {
  for (size_t i = 0; i < tickets.size(); ++i) {
    if (OwnSlot(tickets[i]) == kNoSlot) {
      return absl::InvalidArgumentError(absl::StrCat("kaio: WaitAny: ticket ", i, " is stale or not this requester's (EINVAL)"));
    }
  }
  if (tickets.empty()) return absl::InvalidArgumentError("kaio: WaitAny over no tickets");
  absl::Time deadline = absl::Now() + timeout;
  bool armed = false;
  while (true) {
    PumpInline();
    for (size_t i = 0; i < tickets.size(); ++i) {
      if (Finished(tickets[i])) {
        DisarmUnlessNotifying();
        return i;
      }
    }
    if (!armed) {  // arm, then look once more before sleeping
      mailbox_->Arm();
      armed = true;
      continue;
    }
    armed = false;
    if (!Sleep(deadline)) {
      DisarmUnlessNotifying();
      return absl::DeadlineExceededError("kaio: WaitAny timed out (EAGAIN)");
    }
  }
}

// ---------------------------------------------------------------- error / return / cancel

int Client::Error(Ticket ticket) const {
  uint32_t index = core::TicketIndex(ticket.slot());
  core::SlotTable& slots = engine_.slots();
  if (!ticket.valid() || !slots.Contains(index)) return EINVAL;
  const core::Slot& slot = slots.at(index);
  uint64_t word = core::Look(slot);
  if (WordGeneration(word) != core::TicketGeneration(ticket.slot())) return EINVAL;
  // Any thread may ask: not ours (another requester's or service's request in a slot with the same
  // index and generation) is EINVAL, as a stale ticket. Checked again below with the word.
  if (slot.sink.load(std::memory_order_relaxed) != mailbox_ ||
      slot.serial.load(std::memory_order_relaxed) != ticket.serial()) {
    return EINVAL;
  }
  switch (WordState(word)) {
    case SlotState::kFree:
    case SlotState::kReturned:
      return EINVAL;
    case SlotState::kCancelledQueued:
      return ECANCELED;
    case SlotState::kCompleted: {
      int64_t result = slot.result.load(std::memory_order_relaxed);
      // The slot may have been consumed and reused between the two loads: then the ticket is stale.
      if (core::Look(slot) != word) return EINVAL;
      return result < 0 ? static_cast<int>(-result) : 0;
    }
    default:
      return EINPROGRESS;
  }
}

int64_t Client::Return(Ticket ticket) {
  uint32_t index = OwnSlot(ticket);
  if (index == kNoSlot) return -EINVAL;
  core::SlotTable& slots = engine_.slots();
  core::Slot& slot = slots.at(index);
  uint64_t word = core::Look(slot);
  if (WordState(word) != SlotState::kCompleted && inline_io_) {
    // A caller that polls with Return() alone (POSIX style) must still see its requests move.
    PumpInline();
    word = core::Look(slot);
  }
  if (WordState(word) != SlotState::kCompleted) return -EINPROGRESS;
  int64_t result = slot.result.load(std::memory_order_relaxed);
  const uint64_t returned = core::PackWord(WordGeneration(word), SlotState::kReturned);
  const bool in_local_list = slot.in_local_list;
  core::MarkReturned(slot, word);  // only this thread moves our slots out of kCompleted
  if (in_local_list) {
    mailbox_->Unlink(index);
    slots.Free(index, returned);
    return result;
  }
  // Still in the shared stack, or not even pushed yet: Drain() frees it if it is there, else a later
  // drain will. Either way the slot may belong to another request from here on: do not touch it.
  mailbox_->Drain();
  return result;
}

absl::StatusOr<CancelResult> Client::Cancel(Ticket ticket) {
  if (!ticket.valid()) return absl::InvalidArgumentError("kaio: Cancel of the empty ticket (EINVAL)");
  // Only our own live requests, as Return and the waits: another requester's ticket was accepted
  // and cancelled that requester's request.
  if (OwnSlot(ticket) == kNoSlot) {
    return absl::InvalidArgumentError("kaio: Cancel of a ticket that is not a live request of this requester (EINVAL)");
  }
  return engine_.Cancel(core::TicketIndex(ticket.slot()), core::TicketGeneration(ticket.slot()));
}

CancelResult Client::CancelAll(int fd) {
  core::SlotTable& slots = engine_.slots();
  bool any_cancelled = false, any_running = false;
  uint32_t count = slots.allocated();
  for (uint32_t index = 0; index < count; ++index) {
    const core::Slot& slot = slots.at(index);
    // acquire: if the slot is ours and live, its fields (written by this thread) are settled.
    uint64_t word = core::Look(slot);
    SlotState state = WordState(word);
    if (!InFlight(state) || state == SlotState::kClaimed) continue;
    if (slot.sink.load(std::memory_order_relaxed) != mailbox_ || slot.io.fd != fd) continue;
    absl::StatusOr<CancelResult> result = engine_.Cancel(index, WordGeneration(word));
    if (!result.ok()) continue;  // finished and consumed meanwhile
    if (*result == CancelResult::kCanceled) any_cancelled = true;
    if (*result == CancelResult::kNotCanceled) any_running = true;
  }
  if (any_running) return CancelResult::kNotCanceled;
  return any_cancelled ? CancelResult::kCanceled : CancelResult::kAllDone;
}

int Client::NotifyFd() {
  if (!notify_mode_) {
    notify_mode_ = true;
    mailbox_->Arm();
    if (!mailbox_->SharedEmpty() || !mailbox_->LocalEmpty()) mailbox_->SelfWake();
  }
  return mailbox_->event_fd();
}

uint64_t Client::in_flight() const {
  return mailbox_->accepted.load(std::memory_order_relaxed) - mailbox_->delivered.load(std::memory_order_acquire);
}

// ---------------------------------------------------------------- the mailbox pool

MailboxPool::MailboxPool(Engine& engine) : slots_(engine.slots()) {}

MailboxPool::~MailboxPool() = default;

absl::StatusOr<core::Mailbox*> MailboxPool::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!free_.empty()) {
    core::Mailbox* mailbox = free_.back();
    free_.pop_back();
    mailbox->ResetForNewOwner();
    return mailbox;
  }
  absl::StatusOr<std::unique_ptr<core::Mailbox>> mailbox =
      core::Mailbox::Create(slots_, core::Syscalls::Real());  // wake-ups: not a fault-injection target
  if (!mailbox.ok()) return mailbox.status();
  mailboxes_.push_back(*std::move(mailbox));
  return mailboxes_.back().get();
}

void MailboxPool::GiveBack(core::Mailbox* mailbox) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.push_back(mailbox);
}

}  // namespace kaio::runtime
