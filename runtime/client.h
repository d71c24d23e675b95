// Client: one requester's side of the engine: its requests (claim, describe, enqueue, with a
// ticket serial of its own), its mailbox (collecting completions, the waits, Error/Return) and its
// cancels. kaio::Requester (api/requester.h) is a thin wrapper around one; the contract a consumer
// relies on is written there.
//
// Threading: one thread at a time, as the Requester; Error() from any thread.
// Ownership: the mailbox is the pool's (Service keeps one, MailboxPool) and goes back to it when the
// Client is destroyed, after the destructor has waited for every outstanding request and freed the
// slots still holding results.
#ifndef KAIO_RUNTIME_CLIENT_H_
#define KAIO_RUNTIME_CLIENT_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/io_request.h"
#include "core/mailbox.h"
#include "kaio/types.h"
#include "runtime/engine.h"

#include <mutex>
#include <vector>

namespace kaio::core {
class Mailbox;
class SlotTable;
}

namespace kaio::runtime {

class MailboxPool;

class Client {
 public:
  // A client with a mailbox of `pool`'s (a recycled one, or a new one; given back by the
  // destructor), or the error of making a mailbox (its wake-up eventfd: EMFILE).
  static absl::StatusOr<std::unique_ptr<Client>> Create(Engine& engine, MailboxPool& pool, bool inline_io);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  absl::StatusOr<Ticket> Read(int fd, void* buf, size_t length, int64_t offset, uint64_t tag);
  absl::StatusOr<Ticket> Write(int fd, const void* buf, size_t length, int64_t offset, uint64_t tag);
  absl::StatusOr<Ticket> Readv(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag);
  absl::StatusOr<Ticket> Writev(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag);
  absl::StatusOr<Ticket> Fsync(int fd, uint64_t tag);
  absl::StatusOr<Ticket> Fdatasync(int fd, uint64_t tag);
  void Flush();
  size_t Poll(absl::Span<Completion> out);
  size_t Wait(absl::Span<Completion> out, size_t min_count, absl::Duration timeout);
  absl::Status WaitAll(absl::Span<const Ticket> tickets, absl::Duration timeout);
  absl::StatusOr<size_t> WaitAny(absl::Span<const Ticket> tickets, absl::Duration timeout);
  int Error(Ticket ticket) const;
  int64_t Return(Ticket ticket);
  absl::StatusOr<CancelResult> Cancel(Ticket ticket);
  CancelResult CancelAll(int fd);
  int NotifyFd();
  uint64_t in_flight() const;

 private:
  // inline_io: flush, then reap what the kernel finished (for every requester) on this thread.
  void PumpInline();
  absl::StatusOr<Ticket> Submit(int fd, core::IoOp opcode, void* buf, uint64_t nbytes, int64_t offset, uint64_t tag);
  absl::StatusOr<Ticket> SubmitVector(int fd, core::IoOp opcode, const struct iovec* iov, int iovcnt, int64_t offset,
                                      uint64_t tag);
  size_t TakeLocal(absl::Span<Completion> out);
  // The slot index of a live ticket of ours, or UINT32_MAX.
  uint32_t OwnSlot(Ticket ticket) const;
  bool Finished(Ticket ticket) const;
  void DisarmUnlessNotifying();
  // Mailbox::Sleep and Nap, watching reap_fd_ too; after a wake-up on it, reaps (the kernel told us
  // one of our requests finished, and only we were told). False on timeout, as Sleep; Nap's true
  // means woken.
  bool Sleep(absl::Time deadline);
  bool Nap(absl::Duration nap);
  void ReapAfterKernelWake(core::Mailbox::AlsoWatch& also);
  // Wait's nap while the pool runs one of our buffered file writes (see Client::Wait), and how many
  // naps in a row that find nothing before it sleeps until woken: one, so a write that takes long
  // (held by dirty-page throttling) costs one nap per sleep, not a stream of timer wake-ups.
  static constexpr absl::Duration kPoolNap = absl::Microseconds(50);
  static constexpr int kMaxPoolNaps = 1;
  // Serial numbers for this client's tickets: a block of the process-wide range at a time.
  uint64_t NextSerial();

  Client(Engine& engine, MailboxPool& pool, core::Mailbox* mailbox, bool inline_io);

  Engine& engine_;
  MailboxPool& pool_;
  core::Mailbox* mailbox_;
  std::unique_ptr<Engine::ProducerToken> token_;
  bool notify_mode_ = false;
  const bool inline_io_;
  // inline_io: the eventfd the kernel announces our inline-submitted requests' completions on
  // (Engine::SubmitInline's owner_reap_fd), so that Wait is woken by the kernel itself and reaps;
  // -1 without inline_io, in notify mode (the program sleeps on the notify fd, not in our waits),
  // or if it could not be made or the program closed it (the engine's eventfd then, as before).
  int reap_fd_ = -1;
  bool flush_pending_ = false;  // inline_io: requests queued while the submitter sleeps
  uint64_t next_serial_ = 0;
  uint64_t serial_block_end_ = 0;
};

// The mailboxes of a service's clients, recycled, never freed while the service runs: a completer
// may still be inside Deliver() just after the owner saw its completion. Destroy it only after the
// engine (whose threads deliver). Thread-safe (a mutex: once per client created or destroyed).
class MailboxPool {
 public:
  explicit MailboxPool(Engine& engine);
  ~MailboxPool();
  absl::StatusOr<core::Mailbox*> Take();
  void GiveBack(core::Mailbox* mailbox);

 private:
  core::SlotTable& slots_;
  std::mutex mu_;
  std::vector<std::unique_ptr<core::Mailbox>> mailboxes_;
  std::vector<core::Mailbox*> free_;
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_CLIENT_H_
