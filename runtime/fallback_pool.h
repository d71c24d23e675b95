// FallbackPool: the blocking workers behind the engine, for what the kernel would block on
// (buffered writes ext4 refuses under RWF_NOWAIT, cache-missing reads, fsyncs, a stream lane's
// head). It owns its threads, its mutex and its queue (runtime/pool_queue.h: which request a worker
// takes next); what a worker does with a request is the engine's (`run`: move it to kPoolRunning,
// make the blocking call, complete it), so the pool makes no transition of a request itself.
//
// Threading: Push may be called from any thread, also an inline_io requester's: it takes the
// pool's mutex and may start a worker (with every signal blocked, so a process-directed signal
// never lands on one). Workers call `run` outside the mutex. Stop is called once, when nothing can
// push any more (the engine's other threads are joined); the destructor calls it too.
//
// Memory ordering: everything the pool keeps (queue, idle count, threads, stopping_) is under mu_,
// so a request pushed is seen whole by the worker that takes it; what a request carries is handed
// on by its slot's word (the pusher's release into kPoolQueued, the worker's acquire in `run`).
//
// Why a mutex: the pool is the slow path, and its lock costs nothing next to the blocking call it
// hands out (measured: BENCHMARKS.md, the pool's lanes).
#ifndef KAIO_RUNTIME_FALLBACK_POOL_H_
#define KAIO_RUNTIME_FALLBACK_POOL_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "core/io_request.h"
#include "core/slot.h"
#include "runtime/pool_queue.h"

namespace kaio::runtime {

// When a worker that found no work polls for the next push instead of sleeping (see
// FallbackPool::Loop). A push that finds a spinner hands its request over without a wake-up.
struct PoolSpin {
  // How long it polls: about one signalled completion's round trip on a VM (the requester woken
  // from sigsuspend, its handler, its next aio_write). 0: never.
  int64_t spin_ns = 50'000;
  // About what waking a sleeping worker takes (a halted vCPU's wake-up included): a stretch
  // measured to the wake-up is this much longer than the gap between pushes.
  int64_t wake_ns = 25'000;
  // Pushes closer together than this are a stream (a requester with many requests in flight): a
  // worker that sleeps then finds several in the queue when it wakes, and one that spins takes
  // them one by one, racing the pusher for the mutex (a signal per request at iodepth 16: 0.89x
  // the IOPS with the spin, level without it).
  int64_t streaming_gap_ns = 10'000;
};

class FallbackPool {
 public:
  // At most max(1, max_threads) workers, started as work arrives; `run` is called on a worker for
  // each request it takes. No spin where the process may use only one CPU (the spinner would hold
  // the CPU its pusher needs).
  FallbackPool(core::SlotTable& slots, int max_threads, std::function<void(uint32_t)> run, PoolSpin spin = {});
  ~FallbackPool() { Stop(); }
  FallbackPool(const FallbackPool&) = delete;
  FallbackPool& operator=(const FallbackPool&) = delete;

  // Queues a request (its slot in kPoolQueued): in fd `lane_fd`'s lane (a buffered file write,
  // run one at a time per fd) or for any worker (PoolQueue::kAnyWorker). Wakes an idle worker or
  // starts one. False if no worker runs and none can be started (RLIMIT_NPROC): the request was
  // not queued, and the caller answers it.
  bool Push(uint32_t index, int lane_fd);

  // Wakes every worker and joins them; each finishes the requests it holds first. Idempotent.
  void Stop();

  // relaxed, both: statistics (ServiceStats::pool_threads; the pushes a spinning worker took).
  uint64_t threads_started() const { return threads_started_.load(std::memory_order_relaxed); }
  uint64_t spin_handoffs() const { return spin_handoffs_.load(std::memory_order_relaxed); }

 private:
  static int CpusWeMayUse();

  void Loop();
  // Polls spin_claimed_ for up to spin_.spin_ns; true if a push (or Stop) claimed this spinner.
  bool SpinForPush();

  const int max_threads_;
  const PoolSpin spin_;
  const std::function<void(uint32_t)> run_;
  std::mutex mu_;
  std::condition_variable cv_;
  PoolQueue queue_;                   // under mu_
  std::vector<std::thread> threads_;  // under mu_ (Stop joins them after taking the list)
  int idle_ = 0;                      // under mu_
  bool stopping_ = false;             // under mu_
  // At most one worker spins (polls for the next push) instead of sleeping, and only while the
  // others sleep and the last idle stretch was a round trip's length (see Loop). Under mu_;
  // spin_claimed_ is set under mu_ too, by the push that hands its request to the spinner, and
  // read by the spinner without it (then it takes the request under mu_).
  bool spinning_ = false;
  bool last_idle_was_round_trip_ = false;
  std::atomic<bool> spin_claimed_{false};
  std::atomic<uint64_t> threads_started_{0};
  std::atomic<uint64_t> spin_handoffs_{0};
};

// Runs the request on the calling thread, retrying EINTR (a pipe's or socket's read or write
// where its pread or pwrite says ESPIPE); a vectored one resumes `vectored_skip` bytes in.
// Returns the count or -errno.
int64_t RunBlocking(const core::IoRequest& io, uint64_t vectored_skip);

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_FALLBACK_POOL_H_
