// posix/startup.cc: the State's start-up, fork and exit (see startup.h).
#include "posix/startup.h"

#include <errno.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kaio/posix.h"
#include "kaio/service.h"
#include "posix/aiocb_words.h"
#include "posix/waiting.h"

namespace kaio::posix {

std::mutex g_init_mu;
bool g_config_failed = false;
PosixOptions* g_configured = nullptr;

namespace {

bool g_stats_at_exit = false;

}  // namespace

void AtforkPrepare() { g_init_mu.lock(); }
void AtforkParent() { g_init_mu.unlock(); }
void AtforkChild() {
  // The engine's threads did not come along: the child starts its own service when it needs one.
  // The parent's state is abandoned, not destroyed (its mutexes may be held by threads that are
  // gone).
  // relaxed: the child has one thread until it starts another (pthread_create orders these stores
  // before the new thread), and g_init_mu, held since AtforkPrepare, guards g_state's stores.
  g_state.store(nullptr, std::memory_order_relaxed);
  g_pid.store(static_cast<int>(getpid()), std::memory_order_relaxed);
  g_init_mu.unlock();
}

namespace {

[[maybe_unused]] const bool g_atfork_registered = [] {
  pthread_atfork(AtforkPrepare, AtforkParent, AtforkChild);
  return true;
}();

}  // namespace

void PrintStatsAtExit() {
  // acquire: pairs with StartSlow's release store, so the State read through the pointer is built.
  State* s = g_state.load(std::memory_order_acquire);
  if (s == nullptr) return;
  PosixStats st = s->Stats();
  std::fprintf(stderr,
               "kaio: pid %d: %llu POSIX AIO requests (%llu held back for ordering, "
               "%llu cancelled, %llu signals, %llu SIGEV_THREAD callbacks); engine: %llu "
               "completed, %llu to the kernel in %llu io_submit calls (average batch %.1f), %llu in "
               "the blocking pool, %llu RWF_NOWAIT refusals; %llu submitted and %llu reaped on the "
               "callers' threads\n",
               static_cast<int>(getpid()), static_cast<unsigned long long>(st.submitted),
               static_cast<unsigned long long>(st.ordered),
               static_cast<unsigned long long>(st.cancelled), static_cast<unsigned long long>(st.signals_sent),
               static_cast<unsigned long long>(st.threads_notified),
               static_cast<unsigned long long>(st.service.requests_completed),
               static_cast<unsigned long long>(st.service.kernel_submitted),
               static_cast<unsigned long long>(st.service.io_submit_calls), st.service.average_batch,
               static_cast<unsigned long long>(st.service.pool_requests),
               static_cast<unsigned long long>(st.service.nowait_retries),
               static_cast<unsigned long long>(st.service.inline_submitted),
               static_cast<unsigned long long>(st.service.inline_reaped));
}

State* StartSlow(int* error) {
  std::lock_guard<std::mutex> lock(g_init_mu);
  // relaxed: under g_init_mu, which every store of g_state holds (here and AtforkChild), so the
  // mutex orders this load after them.
  if (State* s = g_state.load(std::memory_order_relaxed)) return s;
  if (g_config_failed) {
    *error = EINVAL;
    return nullptr;
  }
  PosixOptions options;
  if (g_configured != nullptr) {
    options = *g_configured;
  } else {
    absl::StatusOr<PosixOptions> parsed = OptionsFromEnvironment();
    if (!parsed.ok()) {
      std::fprintf(stderr,
                   "%s\nkaio: POSIX AIO is disabled: aio_read, aio_write, aio_fsync and lio_listio fail "
                   "with EINVAL until the variable is fixed or unset.\n",
                   std::string(parsed.status().message()).c_str());
      g_config_failed = true;
      *error = EINVAL;
      return nullptr;
    }
    options = *parsed;
  }
  absl::StatusOr<std::unique_ptr<Service>> service;
  {
    BlockAsyncSignals block;  // the engine's threads inherit it
    service = Service::Create(options.service);
  }
  if (!service.ok()) {
    std::fprintf(stderr, "kaio: cannot start the POSIX AIO service: %s\n",
                 std::string(service.status().message()).c_str());
    if (absl::IsInvalidArgument(service.status())) {
      g_config_failed = true;
      *error = EINVAL;
    } else {
      *error = EAGAIN;
    }
    return nullptr;
  }
  // relaxed: a cache of getpid() (see CurrentPid).
  g_pid.store(static_cast<int>(getpid()), std::memory_order_relaxed);
  State* s = new State(*std::move(service), options);
  // release: pairs with the acquire loads of GetState and the other readers, so a thread that sees
  // the pointer sees the State constructed.
  g_state.store(s, std::memory_order_release);
  if (options.print_stats && !g_stats_at_exit) {
    g_stats_at_exit = true;
    std::atexit(PrintStatsAtExit);
  }
  if (options.verbose) {
    std::fprintf(stderr,
                 "kaio: POSIX AIO on kaio in pid %d (queue depth %d, %d pool threads, idle release %lld ms, "
                 "max %d requests)\n",
                 static_cast<int>(getpid()), options.service.queue_depth, options.service.fallback_threads,
                 static_cast<long long>(absl::ToInt64Milliseconds(options.service.idle_release)),
                 options.service.max_requests);
  }
  return s;
}

State* GetState(int* error) {
  // acquire: pairs with StartSlow's release store (see there).
  State* s = g_state.load(std::memory_order_acquire);
  return s != nullptr ? s : StartSlow(error);
}

int Submit(struct aiocb* cb, Op op) {
  int error = 0;
  State* s = GetState(&error);
  if (s == nullptr) {
    MarkFailed(cb, error);
  } else {
    error = s->SubmitAiocb(cb, op, nullptr);
  }
  if (error == 0) return 0;
  errno = error;
  return -1;
}


}  // namespace kaio::posix
