// kaio/posix.h: POSIX asynchronous I/O (<aio.h>) on kaio's completion service.
//
// The same implementation is reachable two ways:
//   - as C functions named kaio_aio_read ... kaio_lio_listio, from the library target //api:posix
//     (C++ programs that link kaio and want POSIX AIO semantics next to the C++ API);
//   - under glibc's own names (aio_read, aio_read64, ... lio_listio64) from the shared object
//     //api:kaio_posix (bazel-bin/api/libkaio_posix.so), which, loaded with LD_PRELOAD, replaces
//     glibc's implementation in an unmodified, already-built program.
//
// One process-wide kaio Service is started on the first submission, with options from the
// environment (see kaio/posix_options.h) unless Configure() ran first. A malformed variable is
// reported on stderr once and every submission then fails with EINVAL.
//
// Semantics (POSIX.1-2017 and the Linux man pages; where POSIX leaves a choice, kaio's is named here
// and checked by tests/posix/posix_conformance_test.cc):
//   - aio_read/aio_write/aio_fsync return 0 once the request is queued; errors found at submission
//     (aio_reqprio outside [0, AIO_PRIO_DELTA_MAX] for a read or write, SIGEV_THREAD without a
//     function (glibc crashes), EAGAIN
//     when KAIO_MAX_REQUESTS requests are alive or when a request that must wait for earlier writes
//     cannot get kaio's ordering thread, and for aio_fsync a bad op or an fd that is not open)
//     return -1 with errno, and the aiocb then reports the same error (glibc leaves a refused
//     aio_fsync's aiocb untouched). Every other error (EBADF, EINVAL for a negative offset, EFBIG,
//     EIO...) is the request's asynchronous result.
//   - Order: on a pipe, socket, FIFO or tty, reads run one at a time in call order, and so do
//     writes (POSIX requires it for writes to a device that cannot seek; glibc runs one request per
//     fd). Unlike glibc the two directions are independent, and a read waiting for data holds no
//     thread (readiness, epoll), so idle sockets never hold back file I/O; aio_offset is ignored
//     there (glibc's ESPIPE fallback to read does the same). O_APPEND writes land in call order.
//     Requests on a regular file run in parallel: overlapping writes in flight together may land in
//     either order (POSIX leaves it open; glibc's one-at-a-time per fd keeps call order). A read
//     waiting on an idle stream is really cancelled by aio_cancel (glibc: AIO_NOTCANCELED).
//     The differences from glibc 2.36 that are kaio's choice are listed, with the reason, in
//     tests/posix/posix_diff_allowed.txt; the differential test allows no other.
//   - Each operation reads only its own fields, as glibc's: aio_fsync only aio_fildes and
//     aio_sigevent (aio_reqprio is ignored; glibc ignores it too, and POSIX lists no aio_reqprio
//     error for aio_fsync); aio_read/aio_write never aio_lio_opcode.
//   - aio_fsync syncs any open fd, read-only ones and directories included (as glibc does, and the
//     kernel's fsync; POSIX.1-2001's "open for writing" EBADF is gone from POSIX.1-2008).
//   - Submission on the caller's thread (KAIO_INLINE_SUBMIT, on by default): a thread's aio_read,
//     aio_write or lio_listio that follows its own aio_error/aio_return/aio_suspend (or is its
//     first) calls io_submit itself while kaio's submitter thread sleeps and none of the process's
//     requests is in flight, with RWF_NOWAIT so the call
//     cannot block (what the kernel refuses goes to the blocking pool); the rest of a burst is handed
//     to the submitter. A page-cache hit can therefore be complete, and its sigevent sent, before
//     aio_read returns. Nothing is ever left for a later aio_* call to submit.
//   - A write completes in full, as write(2) on a blocking fd would, even where the kernel's
//     non-blocking attempt wrote only part (pipes, sockets): the rest is finished by a blocking
//     worker. A read of a regular file is short only at end of file.
//   - Writes to an O_APPEND fd happen in the order of the calls; aio_fsync covers every write on
//     the fd queued before it (both are held back, never blocking the caller, until the earlier
//     writes complete).
//   - aio_error returns -1/EINVAL for an aiocb that kaio never accepted in this process (never
//     submitted, or submitted before fork() in the parent); glibc returns the stale field.
//     aio_error keeps answering the final error after aio_return.
//   - aio_return returns -1/EINPROGRESS while the request runs; on a failed request it returns -1 and
//     also sets errno to the request's error. A second call returns the same value again (as glibc's
//     does; POSIX leaves it undefined).
//   - aio_cancel: requests still queued are cancelled (AIO_CANCELED; error ECANCELED, return -1, and
//     their sigevent fires); requests already in the kernel or a worker run to their real result
//     (AIO_NOTCANCELED). An aiocb whose aio_fildes differs from fd is EINVAL, as in glibc.
//   - aio_suspend returns 0 at once when no listed request is in progress (including an empty list
//     or a list of NULLs), EAGAIN on timeout (CLOCK_MONOTONIC), EINTR when a signal handler runs.
//     It sleeps on a futex (async-signal-safe), and is a cancellation point, on entry and while it
//     sleeps (as glibc's). A timeout too long for a 64-bit nanosecond deadline (over 9.2e9 s)
//     waits "forever" (glibc returns EAGAIN at once for tv_sec = TIME_T_MAX).
//     One limit, from submission on the calling thread: a signal handler that interrupts this
//     thread's aio_read/aio_write/lio_listio must not wait there (aio_suspend, LIO_WAIT) for
//     requests that have not completed yet, since the interrupted call may hold kaio's submit or
//     reap role, which those requests need. glibc has the same limit in another form (its aio_read
//     holds the mutex its aio_suspend takes). KAIO_INLINE_SUBMIT=0 lifts it.
//   - lio_listio sends each request's own sigevent as well as the list's (as glibc >= 2.4 does).
//     LIO_WAIT answers EIO if any request failed; LIO_NOWAIT answers EAGAIN if a request could not
//     be queued for lack of resources and EIO if one was rejected (both after queueing the rest;
//     POSIX allows no other errno once some are queued, where glibc answers a rejected entry's
//     EINVAL). An entry whose aio_lio_opcode is not LIO_READ/LIO_WRITE/LIO_NOP is accepted and fails
//     alone with EINVAL, asynchronously, its sigevent sent (as glibc; POSIX names no error for it).
//   - sigevent: SIGEV_NONE; SIGEV_SIGNAL (si_code SI_ASYNCIO, si_value, si_pid; signal 0 means no
//     signal, as a zeroed aiocb asks); SIGEV_THREAD (run on kaio's notification threads, never on
//     the engine's; with sigev_notify_attributes, a new detached thread with those attributes; the
//     callback runs with no signal blocked, as glibc's, and the threads block asynchronous signals
//     while they wait); SIGEV_THREAD_ID. An unknown sigev_notify sends nothing, and SIGEV_SIGNAL
//     with a number no signal has fails the request with EINVAL after it ran (both as glibc).
//     aio_return of a failed request returns -1 and leaves errno alone (as glibc). aio_suspend does
//     not check its timeout (as glibc; POSIX names no EINVAL). A SIGEV_THREAD request whose
//     callback thread cannot be started (RLIMIT_NPROC, address space) completes with EAGAIN and
//     its callback does not run (glibc's code means the same, but there the callback is silently
//     lost and the result kept); a list's callback is dropped, as glibc's.
//   - fork(): the child starts a new service on its first submission; requests the parent had in
//     flight are the parent's (in the child their aiocbs answer EINVAL).
//   - At exit, requests in flight are not waited for (as with glibc); the service is never torn down.
//     AIO from an atexit handler or a late static or thread_local destructor works.
#ifndef KAIO_API_POSIX_H_
#define KAIO_API_POSIX_H_

#include <aio.h>
#include <signal.h>
#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

int kaio_aio_read(struct aiocb* aiocbp);
int kaio_aio_write(struct aiocb* aiocbp);
int kaio_aio_fsync(int op, struct aiocb* aiocbp);
int kaio_aio_error(const struct aiocb* aiocbp);
ssize_t kaio_aio_return(struct aiocb* aiocbp);
int kaio_aio_cancel(int fildes, struct aiocb* aiocbp);
int kaio_aio_suspend(const struct aiocb* const list[], int nent, const struct timespec* timeout);
int kaio_lio_listio(int mode, struct aiocb* const list[], int nent, struct sigevent* sig);

#ifdef __cplusplus
}  // extern "C"

#include <cstdint>

#include "absl/status/status.h"
#include "kaio/posix_options.h"
#include "kaio/types.h"

namespace kaio::posix {

// Sets the options of the process-wide service instead of reading the environment. Only before
// the first submission: FAILED_PRECONDITION once the service runs. INVALID_ARGUMENT for options
// Service::Create would refuse.
absl::Status Configure(const PosixOptions& options);

struct PosixStats {
  bool started = false;           // false until the first submission started the service
  uint64_t submitted = 0;         // requests accepted (aio_read/aio_write/aio_fsync/lio_listio entries)
  uint64_t ordered = 0;           // held back behind earlier writes (O_APPEND, aio_fsync)
  uint64_t cancelled = 0;         // cancelled by aio_cancel (AIO_CANCELED)
  uint64_t signals_sent = 0;      // SIGEV_SIGNAL / SIGEV_THREAD_ID notifications
  uint64_t threads_notified = 0;  // SIGEV_THREAD notifications
  ServiceStats service;           // the engine's counters
};
PosixStats Stats();

}  // namespace kaio::posix

#endif  // __cplusplus

#endif  // KAIO_API_POSIX_H_
