#include "core/syscalls.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>

namespace kaio::core {

// libaio 0.3.113 returns -errno from io_* (it never sets errno), which is already our convention.
int Syscalls::IoSetup(int max_events, io_context_t* ctx) { return io_setup(max_events, ctx); }
int Syscalls::IoDestroy(io_context_t ctx) { return io_destroy(ctx); }
int Syscalls::IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) {
  return io_submit(ctx, nr, iocbs);
}
namespace {

// The completion ring the kernel maps at the io context's address: a stable ABI (fio's userspace_reap,
// libaio's own empty-ring check and Seastar read it too).
struct AioRing {
  unsigned id;
  unsigned nr;    // events in the ring
  unsigned head;  // next event to consume; written by the consumer
  unsigned tail;  // next event the kernel fills; written by the kernel
  unsigned magic;
  unsigned compat_features;
  unsigned incompat_features;
  unsigned header_length;
  struct io_event io_events[];
};
constexpr unsigned kAioRingMagic = 0xa10a10a1;

// Takes up to nr events straight from the ring, without a syscall; -1 when the ring's layout is not
// the one we know (then the caller makes the syscall). One consumer at a time (kaio's reaper).
int ReapFromRing(io_context_t ctx, long nr, struct io_event* events) {
  auto* ring = reinterpret_cast<AioRing*>(ctx);
  if (ring->magic != kAioRingMagic || ring->incompat_features != 0) return -1;
  unsigned head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
  // acquire: the kernel fills an event before it advances tail (it issues smp_wmb() in between).
  unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
  const unsigned size = ring->nr;
  if (head >= size || tail >= size) return -1;
  long n = 0;
  while (head != tail && n < nr) {
    events[n++] = ring->io_events[head];
    head = head + 1 == size ? 0 : head + 1;
  }
  // release: our copies are done before the kernel may reuse those ring entries.
  __atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
  return static_cast<int>(n);
}

}  // namespace

int Syscalls::IoGetEvents(io_context_t ctx, long min_nr, long nr, struct io_event* events,
                          struct timespec* timeout) {
  // The reaper's non-blocking polls read the ring in user space: one syscall fewer per wake-up.
  if (min_nr == 0 && timeout != nullptr && timeout->tv_sec == 0 && timeout->tv_nsec == 0) {
    int n = ReapFromRing(ctx, nr, events);
    if (n >= 0) return n;
  }
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

int64_t Syscalls::Preadv2(int fd, const struct iovec* iov, int iovcnt, int64_t offset, int flags) {
  ssize_t n = preadv2(fd, iov, iovcnt, offset, flags);
  return n < 0 ? -errno : static_cast<int64_t>(n);
}

Syscalls& Syscalls::Real() {
  static Syscalls real;
  return real;
}

namespace {

// Where kaio's own descriptors go: 960 is the top 64 of the usual soft limit of 1024, far from where
// programs dup2, and a higher floor under a large limit (containers set 1M) would only grow the
// process's fd table.
int HiddenFdFloor() {
  struct rlimit limit;
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  const rlim_t soft = limit.rlim_cur == RLIM_INFINITY ? rlim_t{1} << 20 : limit.rlim_cur;
  return static_cast<int>(std::min<rlim_t>(960, soft * 3 / 4));
}

}  // namespace

int MoveOutOfTheWay(int fd) {
  if (fd < 0) return fd;
  const int floor = HiddenFdFloor();
  if (fd >= floor) return fd;
  const int saved = errno;
  const int moved = fcntl(fd, F_DUPFD_CLOEXEC, floor);
  errno = saved;
  if (moved < 0) return fd;  // EINVAL or EMFILE: nothing free up there, keep the low one
  close(fd);
  return moved;
}

int DupOutOfTheWay(int fd) {
  const int high = fcntl(fd, F_DUPFD_CLOEXEC, HiddenFdFloor());
  if (high >= 0 || errno != EINVAL) return high;  // EBADF: closed; EMFILE: the table is full
  return fcntl(fd, F_DUPFD_CLOEXEC, 0);           // EINVAL: the floor is past the limit
}

}  // namespace kaio::core
