// NowNs: kaio's one clock (core/clock.h) under the name the tools, the stress driver, the examples
// and the benchmarks use.
#ifndef KAIO_TOOLS_CLOCK_H_
#define KAIO_TOOLS_CLOCK_H_

#include <cstdint>

#include "core/clock.h"

namespace kaio_tools {

using ::kaio::core::MonotonicNs;
inline int64_t NowNs() { return MonotonicNs(); }

}  // namespace kaio_tools

#endif  // KAIO_TOOLS_CLOCK_H_
