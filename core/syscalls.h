// The thin seam between kaio and the kernel: every io_* call, eventfd access and read done in place
// of one (Preadv2) goes through Syscalls, so tests can inject faults (EAGAIN from io_submit, EINTR
// from io_getevents, a failing io_setup...).
//
// Error model: every method returns a non-negative count or -errno; none of them touches errno.
// Threading: the real implementation is stateless and thread-safe; a fault-injecting subclass must be too.
#ifndef KAIO_CORE_SYSCALLS_H_
#define KAIO_CORE_SYSCALLS_H_

#include <libaio.h>
#include <sys/uio.h>
#include <time.h>

#include <cstdint>

namespace kaio::core {

class Syscalls {
 public:
  virtual ~Syscalls() = default;

  virtual int IoSetup(int max_events, io_context_t* ctx);
  virtual int IoDestroy(io_context_t ctx);
  // Returns how many iocbs the kernel accepted (possibly fewer than nr), or -errno for the first one.
  virtual int IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs);
  // io_getevents may return fewer than min_nr (folly learnt this the hard way): callers loop.
  virtual int IoGetEvents(io_context_t ctx, long min_nr, long nr, struct io_event* events,
                          struct timespec* timeout);
  virtual int IoCancel(io_context_t ctx, struct iocb* iocb, struct io_event* result);
  // eventfd counter access; returns 8 on success or -errno.
  virtual int EventFdRead(int fd, uint64_t* value);
  virtual int EventFdWrite(int fd, uint64_t value);
  // preadv2(2); returns the bytes read or -errno.
  virtual int64_t Preadv2(int fd, const struct iovec* iov, int iovcnt, int64_t offset, int flags);

  // The process-wide real implementation.
  static Syscalls& Real();
};

// Moves one of kaio's own descriptors (eventfds, the stream lanes' epoll set) out of the low
// numbers programs reuse: a program that dup2s onto 3, 4, 5... or closes a range it thinks is free
// must not hit kaio's (glibc's AIO holds none; a dup2 onto kaio's completion eventfd would make
// every later request fail, and one onto the submitter's wake-up fd would have kaio write 8 bytes
// into the program's file). Returns the new number, at or above min(960, 3/4 of RLIMIT_NOFILE's soft
// limit), with `fd` closed; or `fd` itself when no such number is free. Keeps O_CLOEXEC.
int MoveOutOfTheWay(int fd);

// A close-on-exec duplicate of `fd` in the same place: kaio's own reference to a program's file
// (the stream lanes hold one while a request waits on it, so that the program closing its number
// does not take the file from under the request, as glibc's blocked helper keeps it). -1 with
// errno (EBADF, EMFILE) if none can be made.
int DupOutOfTheWay(int fd);

}  // namespace kaio::core

#endif  // KAIO_CORE_SYSCALLS_H_
