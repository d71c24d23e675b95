#include "core/syscalls.h"

#include <errno.h>
#include <unistd.h>

namespace kaio::core {

// libaio 0.3.113 returns -errno from io_* (it never sets errno), which is already our convention.
int Syscalls::IoSetup(int max_events, io_context_t* ctx) { return io_setup(max_events, ctx); }
int Syscalls::IoDestroy(io_context_t ctx) { return io_destroy(ctx); }
int Syscalls::IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) {
  return io_submit(ctx, nr, iocbs);
}
int Syscalls::IoGetEvents(io_context_t ctx, long min_nr, long nr, struct io_event* events,
                          struct timespec* timeout) {
  return io_getevents(ctx, min_nr, nr, events, timeout);
}
int Syscalls::IoCancel(io_context_t ctx, struct iocb* iocb, struct io_event* result) {
  return io_cancel(ctx, iocb, result);
}
int Syscalls::EventFdRead(int fd, uint64_t* value) {
  ssize_t n = read(fd, value, sizeof(*value));
  return n < 0 ? -errno : static_cast<int>(n);
}
int Syscalls::EventFdWrite(int fd, uint64_t value) {
  ssize_t n = write(fd, &value, sizeof(value));
  return n < 0 ? -errno : static_cast<int>(n);
}

Syscalls& Syscalls::Real() {
  static Syscalls real;
  return real;
}

}  // namespace kaio::core
