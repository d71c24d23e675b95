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
//     (aio_reqprio outside [0, AIO_PRIO_DELTA_MAX], an invalid sigevent, EAGAIN when
//     KAIO_MAX_REQUESTS requests are alive, and for aio_fsync a bad op or an fd not open for
//     writing) return -1 with errno, and the aiocb then reports the same error. Every other error
//     (EBADF, EINVAL for a negative offset, EFBIG, EIO...) is the request's asynchronous result.
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
//     It sleeps on a futex (async-signal-safe); pthread cancellation is checked on entry only.
//     One limit, from submission on the calling thread: a signal handler that interrupts this
//     thread's aio_read/aio_write/lio_listio must not wait there (aio_suspend, LIO_WAIT) for
//     requests that have not completed yet, since the interrupted call may hold kaio's submit or
//     reap role, which those requests need. glibc has the same limit in another form (its aio_read
//     holds the mutex its aio_suspend takes). KAIO_INLINE_SUBMIT=0 lifts it.
//   - lio_listio sends each request's own sigevent as well as the list's (as glibc >= 2.4 does).
//     LIO_WAIT answers EIO if any request failed; LIO_NOWAIT answers EAGAIN if a request could not
//     be queued for lack of resources and EIO if one was rejected (both after queueing the rest).
//   - sigevent: SIGEV_NONE; SIGEV_SIGNAL (si_code SI_ASYNCIO, si_value, si_pid; signal 0 means no
//     signal, as a zeroed aiocb asks); SIGEV_THREAD (run on kaio's notification threads, which
//     block asynchronous signals, never on the engine's threads; with sigev_notify_attributes, a
//     new detached thread with those attributes); SIGEV_THREAD_ID. Anything else is EINVAL.
//   - fork(): the child starts a new service on its first submission; requests the parent had in
//     flight are the parent's (in the child their aiocbs answer EINVAL).
//   - At exit, requests in flight are not waited for (as with glibc); the service is never torn down.
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
  uint64_t continued = 0;         // short kernel results finished by a blocking worker
  uint64_t cancelled = 0;         // cancelled by aio_cancel (AIO_CANCELED)
  uint64_t signals_sent = 0;      // SIGEV_SIGNAL / SIGEV_THREAD_ID notifications
  uint64_t threads_notified = 0;  // SIGEV_THREAD notifications
  ServiceStats service;           // the engine's counters
};
PosixStats Stats();

}  // namespace kaio::posix

#endif  // __cplusplus

#endif  // KAIO_API_POSIX_H_
