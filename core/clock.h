// MonotonicNs: the monotonic clock in nanoseconds, kaio's one time source (the engine, the POSIX
// layer, the tools and benchmarks). clock_gettime(CLOCK_MONOTONIC) is a vDSO call: no syscall,
// cheap enough for every I/O. Async-signal-safe.
#ifndef KAIO_CORE_CLOCK_H_
#define KAIO_CORE_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace kaio::core {

inline int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

}  // namespace kaio::core

#endif  // KAIO_CORE_CLOCK_H_
