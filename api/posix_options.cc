#include "kaio/posix_options.h"

#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kaio::posix {
namespace {

// Reads `name` as an integer in [lo, hi]; leaves *out alone when the variable is unset.
absl::Status ReadInt(const std::function<const char*(const char*)>& getenv, const char* name,
                     int64_t lo, int64_t hi, const char* meaning, int64_t* out) {
  const char* text = getenv(name);
  if (text == nullptr) return absl::OkStatus();
  const char* end = text + std::strlen(text);
  int64_t value = 0;
  auto [ptr, ec] = std::from_chars(text, end, value);
  if (text == end || *text == '-' || ec != std::errc() || ptr != end || value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kaio: environment variable ", name, "='", text, "' is not valid: expected an integer from ",
        lo, " to ", hi, " (", meaning, ")"));
  }
  *out = value;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PosixOptions> ParseEnvironment(const std::function<const char*(const char*)>& getenv) {
  PosixOptions options;
  ServiceOptions& s = options.service;
  int64_t queue_depth = s.queue_depth;
  int64_t idle_ms = absl::ToInt64Milliseconds(s.idle_release);
  int64_t pool = s.fallback_threads;
  int64_t max_requests = s.max_requests;
  int64_t submit_batch = s.submit_batch;
  int64_t reap_batch = s.reap_batch;
  int64_t device_chunk = s.device_submit_chunk;
  int64_t stats = 0;
  int64_t verbose = 0;
  int64_t inline_submit = 1;
  struct Var {
    const char* name;
    int64_t lo, hi;
    const char* meaning;
    int64_t* out;
  };
  const Var vars[] = {
      {"KAIO_QUEUE_DEPTH", 1, 65536, "the kernel AIO queue depth, io_setup's nr_events", &queue_depth},
      {"KAIO_IDLE_RELEASE_MS", 0, 86400000, "milliseconds without requests before the io context is released", &idle_ms},
      {"KAIO_POOL_THREADS", 0, 1024, "blocking worker threads for buffered writes, cache misses and ttys", &pool},
      {"KAIO_MAX_REQUESTS", 1, 16777216, "requests alive at once; beyond it submissions fail with EAGAIN", &max_requests},
      {"KAIO_SUBMIT_BATCH", 1, 4096, "most iocbs passed to one io_submit", &submit_batch},
      {"KAIO_REAP_BATCH", 1, 4096, "most events taken by one io_getevents", &reap_batch},
      {"KAIO_DEVICE_SUBMIT_CHUNK", 1, 4096, "most requests for a device (O_DIRECT) passed to one io_submit",
       &device_chunk},
      {"KAIO_POSIX_STATS", 0, 1, "1 prints kaio's counters to stderr at exit", &stats},
      {"KAIO_POSIX_VERBOSE", 0, 1, "1 prints a line to stderr when kaio starts", &verbose},
      {"KAIO_INLINE_SUBMIT", 0, 1, "1 lets the calling thread submit while kaio's submitter sleeps", &inline_submit},
  };
  for (const Var& var : vars) {
    if (absl::Status st = ReadInt(getenv, var.name, var.lo, var.hi, var.meaning, var.out); !st.ok()) return st;
  }
  s.queue_depth = static_cast<int>(queue_depth);
  s.idle_release = absl::Milliseconds(idle_ms);
  s.fallback_threads = static_cast<int>(pool);
  s.max_requests = static_cast<int>(max_requests);
  s.submit_batch = static_cast<int>(submit_batch);
  s.reap_batch = static_cast<int>(reap_batch);
  s.device_submit_chunk = static_cast<int>(device_chunk);
  s.submitter_thread_name = "kaio-posix-sub";
  s.reaper_thread_name = "kaio-posix-reap";
  options.print_stats = stats != 0;
  options.verbose = verbose != 0;
  options.inline_submit = inline_submit != 0;
  return options;
}

absl::StatusOr<PosixOptions> OptionsFromEnvironment() {
  return ParseEnvironment([](const char* name) -> const char* { return std::getenv(name); });
}

}  // namespace kaio::posix
