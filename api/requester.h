// kaio/requester.h: a producer's handle on the service: submit I/O, then collect completions from
// this requester's own mailbox.
//
// Threading: a Requester belongs to one thread at a time (one per thread or core); only Error() may
// be called from any thread. Nothing blocks unless its name says Wait (the destructor waits too).
// Submission makes no syscall and takes no lock unless the service's submitter sleeps.
//
// Inline I/O (RequesterOptions::inline_io), for threads that poll (an event loop, a loop around
// Wait): instead of waking the service's threads, the requester's own thread submits its queued
// requests (one io_submit for the lot) and reaps finished ones when it calls Poll, Wait, WaitAll,
// WaitAny, Return (of an unfinished ticket) or Flush, whenever the service's submitter and reaper
// are idle. Requests then move only when this thread calls one of those: call Flush() before
// blocking anywhere else (epoll_wait on the notify fd, say). Those calls may make the io_submit
// syscall or hand a request to the blocking pool, but they never sleep unless their name says
// Wait. With ServiceOptions::fallback_threads == 0 there is no RWF_NOWAIT (io_submit itself might
// block), so inline_io is off. An inline requester owns one more eventfd (its reap fd, made at
// creation; without one, EMFILE, it works as before): the kernel announces its inline-submitted
// device requests there, and its waits sleep on it and reap; a request nobody waits for is reaped
// by the service within about a millisecond (docs/guide.md, inline I/O).
//
// Order: requests on a regular file or block device run in parallel, in any order (two overlapping
// writes may land either way round: wait for one before you send the other). On a descriptor that
// cannot seek (pipe, FIFO, socket, tty or other character device) a requester's reads run one at a
// time in submission order, and so do its writes, so a stream's bytes arrive as sent; the two
// directions are independent (a socket's write never waits behind its idle read). Writes to an
// O_APPEND file also land in submission order. Order across requesters is the order the service
// receives them. A stream read waits for data in no thread at all (readiness, epoll), so idle
// sockets never hold back file I/O; it completes with what the first read that finds data returns
// (0 at end of stream), and the offset is ignored. A stream write completes when all of it is
// written, as write(2) on a blocking descriptor. On a descriptor the program set O_NONBLOCK, an
// empty read (a full pipe's write) completes with -EAGAIN, as read(2) would. Cancel really cancels
// a stream request that has moved no data yet, also the one waiting for data.
//
// Ownership: buffers and iovec arrays belong to the caller and must stay valid until the request's
// completion has been consumed. Destroying a Requester waits for its outstanding requests.
//
// Memory ordering, what a consumer may rely on: once Poll or Wait hands you a completion, or
// WaitAll/WaitAny returns for its ticket, or Error() says it is no longer EINPROGRESS, every byte
// the read put into your buffer is visible to the calling thread, and kaio touches the buffer no
// more (no fence or lock needed on your side). What you wrote into a buffer before the Write call
// is what gets written. Another thread that is to read the buffer needs your own synchronisation
// with the thread that collected the completion.
//
// Results: a completion's result is the byte count (a short read is a result, not an error) or
// -errno. Tickets are single-use: once Poll/Wait hands a completion back, or Return() takes it, the
// ticket is stale and Error/Return/Cancel/WaitAll answer EINVAL (never another request's answer).
// A ticket names its requester: another requester's (of this service or another) is answered the
// same way, by every call that takes one, Cancel included. Tickets are never reused in a process.
//
// Errors at submission are statuses: INVALID_ARGUMENT for a null buffer with a non-zero length, a
// negative offset, offset + length past INT64_MAX, a negative fd, a bad iovec;
// FAILED_PRECONDITION after Service::Shutdown(); RESOURCE_EXHAUSTED beyond max_requests alive.
// Errors from the kernel (EBADF for an fd that is not open, EFBIG, EIO...) arrive as the request's
// result, and only that request fails.
#ifndef KAIO_API_REQUESTER_H_
#define KAIO_API_REQUESTER_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kaio/service.h"
#include "kaio/types.h"

namespace kaio {

namespace runtime {
class Client;
}

struct RequesterOptions {
  // See "Inline I/O" above. Off: every request is handed to the service's threads at once.
  bool inline_io = false;
};

class Requester {
 public:
  static absl::StatusOr<std::unique_ptr<Requester>> Create(Service& service, const RequesterOptions& options = {});
  ~Requester();
  Requester(const Requester&) = delete;
  Requester& operator=(const Requester&) = delete;

  // ---- Submission. `tag` comes back in the completion.
  absl::StatusOr<Ticket> Read(int fd, void* buf, size_t length, int64_t offset, uint64_t tag = 0);
  absl::StatusOr<Ticket> Write(int fd, const void* buf, size_t length, int64_t offset, uint64_t tag = 0);
  absl::StatusOr<Ticket> Readv(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag = 0);
  absl::StatusOr<Ticket> Writev(int fd, const struct iovec* iov, int iovcnt, int64_t offset, uint64_t tag = 0);
  absl::StatusOr<Ticket> Fsync(int fd, uint64_t tag = 0);
  absl::StatusOr<Ticket> Fdatasync(int fd, uint64_t tag = 0);

  // With inline_io: submits what this requester queued since the last Poll/Wait/Flush, on this
  // thread when the service's submitter sleeps (else hands it to the submitter). Without: nothing.
  void Flush();

  // ---- Collecting completions (each consumes its ticket).
  // Non-blocking: up to out.size() completions, oldest first.
  size_t Poll(absl::Span<Completion> out);
  // Blocks until at least min_count completions were collected or the timeout passed; returns how
  // many it collected (fewer than min_count only on timeout). Sleeps while it waits; while the
  // service's fallback pool runs one of this requester's buffered file writes it naps instead
  // (50 us, then again only if the nap found a completion), so the pool need not wake it: a
  // completion from the kernel still ends the nap at once.
  size_t Wait(absl::Span<Completion> out, size_t min_count, absl::Duration timeout = absl::InfiniteDuration());

  // ---- Barriers over tickets (the seed's suspend). They consume nothing: collect the results
  // with Return() (or Poll). INVALID_ARGUMENT if a ticket is stale or another requester's;
  // DEADLINE_EXCEEDED (the seed's EAGAIN) on timeout. Other completions stay in the mailbox.
  absl::Status WaitAll(absl::Span<const Ticket> tickets, absl::Duration timeout = absl::InfiniteDuration());
  // POSIX aio_suspend: returns the position in `tickets` of one finished request.
  absl::StatusOr<size_t> WaitAny(absl::Span<const Ticket> tickets, absl::Duration timeout = absl::InfiniteDuration());

  // ---- The seed's error/return pair.
  // EINPROGRESS while running, ECANCELED if cancelled, the I/O's errno, 0 when done successfully,
  // EINVAL for a stale or unknown ticket. Thread-safe and lock-free.
  int Error(Ticket ticket) const;
  // The result (bytes or -errno) of a finished request, consuming the ticket; -EINPROGRESS (ticket
  // still live) while it runs; -EINVAL for a stale, unknown or another requester's ticket.
  int64_t Return(Ticket ticket);

  // ---- Cancellation. Queued requests never start and complete with ECANCELED (kCanceled);
  // requests the kernel or a worker already runs are kNotCanceled and deliver their real result;
  // finished ones are kAllDone. INVALID_ARGUMENT for a stale ticket. The answer is true when given:
  // a buffered request the kernel turns down (nothing moved) returns to the pool's queue, so a later
  // Cancel may say kCanceled after an earlier kNotCanceled; kCanceled and kAllDone never change.
  absl::StatusOr<CancelResult> Cancel(Ticket ticket);
  // Every outstanding request of this requester on fd: kNotCanceled if any could not be cancelled,
  // else kCanceled if any was, else kAllDone.
  CancelResult CancelAll(int fd);

  // An eventfd that is readable whenever completions may be waiting: add it to epoll, and when it
  // fires call Poll() until it returns fewer than asked (that re-arms it). Do not read it yourself.
  int NotifyFd();

  // Requests submitted and not yet completed.
  uint64_t in_flight() const;

 private:
  explicit Requester(std::unique_ptr<runtime::Client> client);

  std::unique_ptr<runtime::Client> client_;  // does the work (runtime/client.h)
};

}  // namespace kaio

#endif  // KAIO_API_REQUESTER_H_
