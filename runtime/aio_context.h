// AioContext: the life of the engine's one kernel context: set up on first need (the submitter's,
// with a back-off and one message per run of failures when the system-wide limit is exhausted),
// read by the hops that use it, released when the engine has been idle (Engine::MaybeReleaseContext
// decides when: it runs the handshake with the reaper) and at the engine's end.
//
// Threading: Ensure, owned and Release belong to whoever holds the engine's submit role (the only
// writer); Current and the counters may be read from any thread.
//
// Memory ordering: the context is stored with release after io_setup returned it; a thread that
// uses it without the submit role (the reaper, Cancel) loads it with acquire. A load that still
// finds a released context is harmless only because the engine releases one when nothing of its
// is in the kernel and nobody reaps (the reaping_ vs in_kernel_ handshake, engine.h): io_cancel
// on it says EINVAL, as for a request that runs on.
#ifndef KAIO_RUNTIME_AIO_CONTEXT_H_
#define KAIO_RUNTIME_AIO_CONTEXT_H_

#include <atomic>
#include <cstdint>

#include "absl/time/time.h"
#include "runtime/kernel_aio.h"

namespace kaio::runtime {

class AioContext {
 public:
  // Contexts for up to `depth` requests in flight, from `kernel`.
  AioContext(KernelAio& kernel, int depth) : kernel_(kernel), depth_(depth) {}
  ~AioContext() { Release(); }
  AioContext(const AioContext&) = delete;
  AioContext& operator=(const AioContext&) = delete;

  // The submit role's: true if a context exists now, setting one up if there is none. After a
  // failure io_setup is tried again only after a back-off (100 ms doubling to 10 s: the system-wide
  // limit does not free up by the microsecond), and the failure is said on stderr once, with the
  // fix, until a set-up succeeds again.
  bool Ensure();
  // The submit role's view of the context (0: none).
  // relaxed: only the submit role's holder writes it, and the caller is that holder.
  KernelAio::Context owned() const { return context_.load(std::memory_order_relaxed); }
  // Any thread's (0: none).
  // acquire: pairs with Ensure's release, so the context is the one io_setup made.
  KernelAio::Context Current() const { return context_.load(std::memory_order_acquire); }
  // The submit role's: releases the context, if any (the caller knows nothing is in the kernel).
  void Release();

  // relaxed: statistics (ServiceStats::contexts_created, contexts_released).
  uint64_t created() const { return created_.load(std::memory_order_relaxed); }
  uint64_t released() const { return released_.load(std::memory_order_relaxed); }

 private:
  KernelAio& kernel_;
  const int depth_;
  std::atomic<KernelAio::Context> context_{0};
  // io_setup's back-off after a failure; the submit role's.
  absl::Time next_attempt_ = absl::InfinitePast();
  absl::Duration backoff_ = absl::ZeroDuration();
  bool failure_reported_ = false;
  std::atomic<uint64_t> created_{0};
  std::atomic<uint64_t> released_{0};
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_AIO_CONTEXT_H_
