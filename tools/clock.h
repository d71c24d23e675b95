// NowNs: the monotonic clock in nanoseconds, the one time source of kaio's tools, stress driver,
// examples and benchmarks (runtime/ keeps its own: the library does not depend on tools/).
// clock_gettime(CLOCK_MONOTONIC) is a vDSO call: no syscall, cheap enough for every I/O.
#ifndef KAIO_TOOLS_CLOCK_H_
#define KAIO_TOOLS_CLOCK_H_

#include <time.h>

#include <cstdint>

namespace kaio_tools {

inline int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

}  // namespace kaio_tools

#endif  // KAIO_TOOLS_CLOCK_H_
