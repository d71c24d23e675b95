// kaio/posix_options.h: the POSIX AIO facade's options, read from the environment the way smb.conf's
// `aio_linux:aio num events` tuned the seed.
//
//   KAIO_QUEUE_DEPTH      kernel queue depth (io_setup's nr_events)      1..65536     default 128
//   KAIO_IDLE_RELEASE_MS  release the io context after this idle time   0..86400000  default 30000
//   KAIO_POOL_THREADS     blocking workers (buffered writes, pipes...)   0..1024      default 4
//   KAIO_MAX_REQUESTS     requests alive at once; beyond, EAGAIN         1..16777216  default 1048576
//   KAIO_SUBMIT_BATCH     most iocbs per io_submit                       1..4096      default 64
//   KAIO_REAP_BATCH       most events per io_getevents                   1..4096      default 64
//   KAIO_DEVICE_SUBMIT_CHUNK  most O_DIRECT iocbs per io_submit          1..4096      default 4
//   KAIO_INLINE_SUBMIT    1: a submission that follows the thread's own   0 or 1      default 1
//                         aio_error/aio_return/aio_suspend calls io_submit on the calling thread
//                         while nothing else runs (kaio/posix.h); 0: always hand over
//   KAIO_POSIX_STATS      1: print kaio's counters to stderr at exit     0 or 1       default 0
//   KAIO_POSIX_VERBOSE    1: print a line to stderr when kaio starts     0 or 1       default 0
//
// A variable that is set must hold exactly a decimal integer in its range (no sign, no spaces, not
// empty); anything else is an error naming the variable, the value and the range.
#ifndef KAIO_API_POSIX_OPTIONS_H_
#define KAIO_API_POSIX_OPTIONS_H_

#include <functional>

#include "absl/status/statusor.h"
#include "kaio/types.h"

namespace kaio::posix {

struct PosixOptions {
  ServiceOptions service;
  bool print_stats = false;  // KAIO_POSIX_STATS
  bool verbose = false;      // KAIO_POSIX_VERBOSE
  bool inline_submit = true; // KAIO_INLINE_SUBMIT
};

// Reads the variables above through `getenv` (nullptr: unset). INVALID_ARGUMENT, with a message
// fit for a user, for a malformed or out-of-range value.
absl::StatusOr<PosixOptions> ParseEnvironment(const std::function<const char*(const char*)>& getenv);

// ParseEnvironment(::getenv).
absl::StatusOr<PosixOptions> OptionsFromEnvironment();

}  // namespace kaio::posix

#endif  // KAIO_API_POSIX_OPTIONS_H_
