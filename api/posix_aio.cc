// POSIX AIO on kaio's engine: the C entry points (kaio_aio_read ... kaio_lio_listio) and
// Configure() / Stats(). See kaio/posix.h for the semantics. Each entry point checks its own
// arguments and calls into the machinery in posix/ (private to this repository):
//   - posix/aiocb_words.h: kaio's words in the aiocb (results, ticket, owner);
//   - posix/waiting.h: the completion futex that aio_suspend and lio_listio(LIO_WAIT) sleep on;
//   - posix/notifier.h: sigevents and the SIGEV_THREAD threads;
//   - posix/records.h: a request, and its record in the engine's slot;
//   - posix/state.h: the process-wide State (submission, completion, cancel: state.cc, cancel.cc);
//   - posix/orderer.h: O_APPEND writes and aio_fsync held back behind earlier writes;
//   - posix/startup.h: start-up, fork and exit.
#include "kaio/posix.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include <atomic>
#include <mutex>

#include "absl/status/status.h"
#include "kaio/posix_options.h"
#include "posix/aiocb_words.h"
#include "posix/notifier.h"
#include "posix/records.h"
#include "posix/startup.h"
#include "posix/state.h"
#include "posix/waiting.h"

namespace kaio::posix {

absl::Status Configure(const PosixOptions& options) {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (g_state.load(std::memory_order_relaxed) != nullptr) {
    return absl::FailedPreconditionError("kaio: POSIX AIO already started; Configure() must come first");
  }
  delete g_configured;
  g_configured = new PosixOptions(options);
  g_config_failed = false;
  return absl::OkStatus();
}

PosixStats Stats() {
  State* s = g_state.load(std::memory_order_acquire);
  return s == nullptr ? PosixStats{} : s->Stats();
}

}  // namespace kaio::posix

// ---------------------------------------------------------------- the C entry points

using kaio::posix::Op;

extern "C" int kaio_aio_read(struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, Op::kRead);
}

extern "C" int kaio_aio_write(struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, Op::kWrite);
}

extern "C" int kaio_aio_fsync(int op, struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  // Refusals mark the aiocb, as every submission's do (kaio/posix.h); glibc's leave it untouched.
  int error = 0;
  if (op != O_SYNC && op != O_DSYNC) {
    error = EINVAL;
  } else if (fcntl(aiocbp->aio_fildes, F_GETFL) < 0) {
    // Only an fd that is not open: a read-only one, a directory's included, is synced (as glibc
    // and the kernel's IOCB_CMD_FSYNC do; POSIX.1-2008 dropped "open for writing"), which is how a
    // program makes a rename durable.
    error = EBADF;
  }
  if (error != 0) {
    kaio::posix::MarkFailed(aiocbp, error);
    errno = error;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, op == O_SYNC ? Op::kFsync : Op::kFdsync);
}

extern "C" int kaio_aio_error(const struct aiocb* aiocbp) {
  kaio::posix::NoteLookedAtResults();
  if (aiocbp == nullptr || !kaio::posix::Ours(aiocbp)) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::LoadError(aiocbp);
}

extern "C" ssize_t kaio_aio_return(struct aiocb* aiocbp) {
  kaio::posix::NoteLookedAtResults();
  if (aiocbp == nullptr || !kaio::posix::Ours(aiocbp)) {
    errno = EINVAL;
    return -1;
  }
  int error = kaio::posix::LoadError(aiocbp);
  if (error == EINPROGRESS) {
    errno = EINPROGRESS;
    return -1;
  }
  // Idempotent, as glibc's: a second call returns the same value (POSIX leaves it undefined, and
  // programs that call it twice work on glibc).
  // errno is left alone, as glibc leaves it: the request's error is aio_error's to tell.
  return __atomic_load_n(&aiocbp->__return_value, __ATOMIC_RELAXED);
}

extern "C" int kaio_aio_cancel(int fildes, struct aiocb* aiocbp) {
  int saved = errno;
  if (fcntl(fildes, F_GETFD) < 0) {
    errno = EBADF;
    return -1;
  }
  errno = saved;
  if (aiocbp != nullptr && aiocbp->aio_fildes != fildes) {
    errno = EINVAL;
    return -1;
  }
  kaio::posix::State* s = kaio::posix::g_state.load(std::memory_order_acquire);
  if (s == nullptr) return AIO_ALLDONE;  // nothing was ever submitted in this process
  if (aiocbp != nullptr) {
    if (!kaio::posix::Ours(aiocbp)) return AIO_ALLDONE;
    return s->CancelAiocb(aiocbp);
  }
  return s->CancelFd(fildes);
}

extern "C" int kaio_aio_suspend(const struct aiocb* const list[], int nent, const struct timespec* timeout) {
  kaio::posix::NoteLookedAtResults();
  pthread_testcancel();
  if (nent < 0 || (list == nullptr && nent > 0)) {
    errno = EINVAL;
    return -1;
  }
  // The timeout is not checked (POSIX names no EINVAL for it): as glibc, a finished request answers
  // 0 whatever it holds, a negative one has already expired (EAGAIN), and a tv_nsec out of range
  // just adds its nanoseconds.
  int64_t deadline = 0;
  if (timeout != nullptr) {
    // Saturated: past about 292 years (9.2e9 s) the nanosecond count overflows, and such a timeout
    // means "never" (glibc 2.36 overflows itself at tv_sec = LONG_MAX and answers EAGAIN at once).
    int64_t span = 0;
    if (__builtin_mul_overflow(int64_t{timeout->tv_sec}, int64_t{1000000000}, &span) ||
        __builtin_add_overflow(span, int64_t{timeout->tv_nsec}, &span) ||
        __builtin_add_overflow(span, kaio::posix::MonotonicNs(), &deadline)) {
      deadline = timeout->tv_sec < 0 ? 0 : INT64_MAX;
    }
  }
  while (true) {
    uint32_t seq = kaio::posix::PrepareToWait();
    bool any_pending = false;
    for (int i = 0; i < nent; ++i) {
      if (list[i] == nullptr) continue;
      if (!kaio::posix::InProgress(list[i])) return 0;  // one has completed (or is not kaio's)
      any_pending = true;
    }
    if (!any_pending) return 0;  // nothing to wait for
    struct timespec left;
    if (timeout != nullptr) {
      int64_t remaining = deadline - kaio::posix::MonotonicNs();
      if (remaining <= 0) {
        errno = EAGAIN;
        return -1;
      }
      left.tv_sec = remaining / 1000000000;
      left.tv_nsec = remaining % 1000000000;
    }
    // aio_suspend is a cancellation point: a cancel that arrives while it sleeps ends the thread
    // there, as glibc's cancellable futex wait does (the same asynchronous-cancel window around one
    // system call). Nothing needs undoing: a stale sleepers bit only costs a wake-up.
    int cancel_type = PTHREAD_CANCEL_DEFERRED;
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &cancel_type);
    const int slept = kaio::posix::SleepOnSequence(seq, timeout != nullptr ? &left : nullptr);
    pthread_setcanceltype(cancel_type, nullptr);
    if (slept == EINTR) {
      errno = EINTR;
      return -1;
    }
  }
}

extern "C" int kaio_lio_listio(int mode, struct aiocb* const list[], int nent, struct sigevent* sig) {
  using kaio::posix::LioGroup;
  using kaio::posix::Notification;
  if ((mode != LIO_WAIT && mode != LIO_NOWAIT) || nent < 0 || (list == nullptr && nent > 0)) {
    errno = EINVAL;
    return -1;
  }
  Notification list_notification;
  if (mode == LIO_NOWAIT && sig != nullptr && !kaio::posix::ParseSigevent(*sig, &list_notification)) {
    errno = EINVAL;
    return -1;
  }
  int error = 0;
  kaio::posix::State* s = kaio::posix::GetState(&error);
  if (s == nullptr) {
    errno = error;
    return -1;
  }
  LioGroup* group = nullptr;
  if (list_notification.notify != SIGEV_NONE) {
    group = new LioGroup;
    group->notification = list_notification;
  }
  bool resources = false, rejected = false, flush = false;
  // The list is one burst: submitted together on this thread, or handed over together.
  const auto route = kaio::posix::TakeLatencyBound() ? kaio::posix::SubmitRoute::kList
                                                     : kaio::posix::SubmitRoute::kHandOff;
  for (int i = 0; i < nent; ++i) {
    struct aiocb* cb = list[i];
    if (cb == nullptr || cb->aio_lio_opcode == LIO_NOP) continue;
    int err;
    if (cb->aio_lio_opcode == LIO_READ) {
      err = s->SubmitAiocb(cb, Op::kRead, group, route, &flush);
    } else if (cb->aio_lio_opcode == LIO_WRITE) {
      err = s->SubmitAiocb(cb, Op::kWrite, group, route, &flush);
    } else {
      err = s->SubmitAiocb(cb, Op::kNone, group, route, &flush);  // fails asynchronously, EINVAL
    }
    if (err == EAGAIN) {
      resources = true;
    } else if (err != 0) {
      rejected = true;
    }
  }
  if (flush) s->FlushInline();  // the whole list in one io_submit (in chunks for a device)
  // The submitter's own count: if everything finished already (or nothing was queued), the list's
  // notification is sent now.
  if (group != nullptr) s->ReleaseGroup(group);
  if (mode == LIO_NOWAIT) {
    if (resources || rejected) {
      errno = resources ? EAGAIN : EIO;
      return -1;
    }
    return 0;
  }
  if (kaio::posix::WaitAllListed(list, nent) == EINTR) {
    errno = EINTR;
    return -1;
  }
  for (int i = 0; i < nent; ++i) {
    struct aiocb* cb = list[i];
    if (cb == nullptr || cb->aio_lio_opcode == LIO_NOP) continue;
    if (kaio::posix::LoadError(cb) != 0) {
      errno = EIO;
      return -1;
    }
  }
  return 0;
}
