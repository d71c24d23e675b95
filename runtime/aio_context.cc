// AioContext (see aio_context.h): io_setup on first need with its back-off, and the release.
#include "runtime/aio_context.h"

#include <errno.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "runtime/engine_internal.h"

namespace kaio::runtime {

bool AioContext::Ensure() {
  if (owned() != 0) return true;
  // Without the back-off, every request would make the call, and print a line.
  const absl::Time now = absl::Now();
  if (now < next_attempt_) return false;
  KernelAio::Context ctx = 0;
  const int rc = kernel_.Setup(depth_, &ctx);
  if (rc < 0) {
    backoff_ = std::clamp(backoff_ * 2, absl::Milliseconds(100), absl::Seconds(10));
    next_attempt_ = now + backoff_;
    if (failure_reported_) return false;  // said once per run of failures
    failure_reported_ = true;
    if (rc == -EAGAIN) {
      std::fprintf(stderr,
                   "kaio: io_setup(%d) failed with EAGAIN: the system-wide AIO limit is exhausted "
                   "(fs.aio-nr=%s, fs.aio-max-nr=%s). Raise it with `sysctl -w fs.aio-max-nr=N` or lower "
                   "ServiceOptions::queue_depth. Requests run in the blocking pool meanwhile; kaio tries "
                   "again every few seconds and says nothing more until it succeeds.\n",
                   depth_, ReadProcValue("/proc/sys/fs/aio-nr").c_str(),
                   ReadProcValue("/proc/sys/fs/aio-max-nr").c_str());
    } else {
      std::fprintf(stderr,
                   "kaio: io_setup(%d) failed: %s; requests run in the blocking pool meanwhile (kaio "
                   "tries again every few seconds and says nothing more until it succeeds).\n",
                   depth_, std::strerror(-rc));
    }
    return false;
  }
  if (failure_reported_) std::fprintf(stderr, "kaio: io_setup(%d) succeeded again\n", depth_);
  failure_reported_ = false;
  backoff_ = absl::ZeroDuration();
  next_attempt_ = absl::InfinitePast();
  // release: pairs with Current()'s acquire (the reaper, Cancel).
  context_.store(ctx, std::memory_order_release);
  // relaxed: a statistic.
  created_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void AioContext::Release() {
  const KernelAio::Context ctx = owned();
  if (ctx == 0) return;
  // release (0 publishes nothing): a Cancel that loaded the old value meanwhile gets EINVAL from
  // io_cancel, as no request is in the kernel.
  context_.store(0, std::memory_order_release);
  kernel_.Release(ctx);
  // relaxed: a statistic.
  released_.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace kaio::runtime
