// A Syscalls seam for tests, the stress driver and the fuzzer: passes through to the kernel, but can hold
// io_submit or io_getevents at a gate, count what was submitted, and inject errors, either on command
// (counted faults: "the next N io_submit calls return -EAGAIN") or at random rates (stress, fuzz).
//
// Threading: every member is safe to call from any thread (kaio calls IoSubmit/IoSetup from its
// submitter, IoGetEvents from its reaper, EventFdRead from both).
#ifndef KAIO_TESTS_FAULT_SYSCALLS_H_
#define KAIO_TESTS_FAULT_SYSCALLS_H_

#include <errno.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <set>
#include <vector>

#include "core/syscalls.h"

namespace kaio::testing {

// A gate threads block at until it opens.
class Gate {
 public:
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = false;
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Blocks while closed; counts the threads that arrived.
  void Pass() {
    std::unique_lock<std::mutex> lock(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
  }
  // Waits until `n` threads have arrived in total.
  void WaitArrived(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return arrived_ >= n; });
  }
  int arrived() {
    std::lock_guard<std::mutex> lock(mu_);
    return arrived_;
  }
  bool closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !open_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
};

// Per-mille probabilities of each random fault (0..1000), for SetRandomFaults.
struct RandomFaultRates {
  int submit_eagain = 0;      // io_submit returns -EAGAIN (kernel queue full)
  int submit_partial = 0;     // io_submit accepts only a prefix of the batch
  int submit_ebadf = 0;       // io_submit fails the first iocb with -EBADF (that request must fail)
  int getevents_eintr = 0;    // io_getevents returns -EINTR
  int getevents_short = 0;    // io_getevents returns fewer events than are ready
  int eventfd_read_eio = 0;   // an eventfd read fails with -EIO
  int setup_eagain = 0;       // io_setup returns -EAGAIN (fs.aio-max-nr exhausted)
  int read_now_eagain = 0;    // a lone inline read's preadv2 returns -EAGAIN (as for an uncached page)
};

class FaultSyscalls : public core::Syscalls {
 public:
  Gate submit_gate;
  Gate getevents_gate;
  // Negative errno to return from the next N io_submit / io_getevents / eventfd reads / io_setup.
  std::atomic<int> submit_error{0};
  std::atomic<int> submit_error_count{0};
  std::atomic<int> submit_partial_count{0};  // next N calls accept only one iocb
  std::atomic<int> getevents_error{0};
  std::atomic<int> getevents_error_count{0};
  std::atomic<int> getevents_short_count{0};  // next N calls return at most one event
  std::atomic<int> eventfd_read_error_count{0};
  std::atomic<int> setup_error_count{0};
  std::atomic<int> submit_calls{0};
  std::atomic<int> getevents_calls{0};
  std::atomic<int> preadv2_calls{0};
  std::atomic<int> preadv2_eagain_count{0};  // next N preadv2 calls return -EAGAIN
  // io_submit treats every iocb on this fd the way the kernel treats a bad fd: the iocbs before it in
  // the batch are submitted and counted, and when it is first the call fails with -fail_fd_errno.
  std::atomic<int> fail_fd{-1};
  std::atomic<int> fail_fd_errno{EBADF};

  // How many faults were actually injected, by kind (random and counted ones alike).
  struct Injected {
    std::atomic<uint64_t> submit_eagain{0}, submit_eintr{0}, submit_partial{0}, submit_request_errors{0};
    std::atomic<uint64_t> getevents_eintr{0}, getevents_short{0}, getevents_errors{0};
    std::atomic<uint64_t> eventfd_read{0}, setup{0}, read_now_eagain{0};
    uint64_t Total() const {
      return submit_eagain.load() + submit_eintr.load() + submit_partial.load() + submit_request_errors.load() +
             getevents_eintr.load() + getevents_short.load() + getevents_errors.load() + eventfd_read.load() +
             setup.load() + read_now_eagain.load();
    }
  } injected;

  // Turns on random faults at the given rates (all zero turns them off). `seed` makes the sequence of
  // decisions repeatable for a given sequence of calls.
  void SetRandomFaults(uint64_t seed, const RandomFaultRates& rates) {
    std::lock_guard<std::mutex> lock(mu_);
    rng_state_ = seed;
    rates_ = rates;
    random_on_.store(rates.submit_eagain > 0 || rates.submit_partial > 0 || rates.submit_ebadf > 0 ||
                         rates.getevents_eintr > 0 || rates.getevents_short > 0 || rates.eventfd_read_eio > 0 ||
                         rates.setup_eagain > 0 || rates.read_now_eagain > 0,
                     std::memory_order_release);
  }

  // Data pointers (slot indexes) of every iocb the kernel accepted.
  bool WasSubmitted(void* data) {
    std::lock_guard<std::mutex> lock(mu_);
    return submitted_.count(data) > 0;
  }

  // Completion events sitting in the ring of the last io context set up, not yet taken by
  // io_getevents (read from the ring's user-space header, as libaio's io_getevents does); -1 when no
  // context exists. Lets a test wait until the kernel has completed requests that kaio has not reaped.
  int RingEvents() const {
    // The kernel's struct aio_ring header (fs/aio.c), which io_setup maps at the context's address.
    struct AioRing {
      unsigned id, nr, head, tail, magic;
    };
    auto* ring = reinterpret_cast<const AioRing*>(context_.load(std::memory_order_acquire));
    if (ring == nullptr) return -1;
    unsigned nr = __atomic_load_n(&ring->nr, __ATOMIC_RELAXED);
    unsigned head = __atomic_load_n(&ring->head, __ATOMIC_ACQUIRE);
    unsigned tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
    if (nr == 0) return -1;
    return static_cast<int>((tail + nr - head) % nr);
  }

  int IoSetup(int max_events, io_context_t* ctx) override {
    if (Take(setup_error_count) || Roll(&RandomFaultRates::setup_eagain)) {
      injected.setup.fetch_add(1);
      return -EAGAIN;
    }
    int rc = core::Syscalls::IoSetup(max_events, ctx);
    if (rc == 0) context_.store(reinterpret_cast<uintptr_t>(*ctx), std::memory_order_release);
    return rc;
  }
  int IoDestroy(io_context_t ctx) override {
    uintptr_t expected = reinterpret_cast<uintptr_t>(ctx);
    context_.compare_exchange_strong(expected, 0);
    return core::Syscalls::IoDestroy(ctx);
  }
  int IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) override {
    submit_gate.Pass();
    submit_calls.fetch_add(1);
    if (Take(submit_error_count)) {
      int error = submit_error.load();
      CountSubmitError(error);
      return error;
    }
    if (Roll(&RandomFaultRates::submit_eagain)) {
      injected.submit_eagain.fetch_add(1);
      return -EAGAIN;
    }
    if (Roll(&RandomFaultRates::submit_ebadf)) {
      injected.submit_request_errors.fetch_add(1);
      return -EBADF;
    }
    if (Take(submit_partial_count)) {
      if (nr > 1) injected.submit_partial.fetch_add(1);
      nr = 1;
    } else if (nr > 1 && Roll(&RandomFaultRates::submit_partial)) {
      injected.submit_partial.fetch_add(1);
      nr = 1 + static_cast<long>(NextRandom() % static_cast<uint64_t>(nr - 1));
    }
    if (int bad = fail_fd.load(); bad >= 0) {
      for (long i = 0; i < nr; ++i) {
        if (iocbs[i]->aio_fildes != bad) continue;
        if (i == 0) {
          injected.submit_request_errors.fetch_add(1);
          return -fail_fd_errno.load();
        }
        nr = i;  // the kernel submits the ones before the bad iocb and returns their count
        break;
      }
    }
    // Note the data pointers before the call: once the kernel has an iocb, its request may complete
    // and its slot be reused (rewritten by a producer) before io_submit even returns.
    std::vector<void*> data(static_cast<size_t>(nr));
    for (long i = 0; i < nr; ++i) data[i] = iocbs[i]->data;
    // This seam reads the iocbs as the kernel does, but unlike the kernel it is visible to TSan. The
    // kernel orders its reads of a submitted iocb before the request's completion event; state that
    // edge (released here, acquired by IoGetEvents), or TSan reports this seam's reads as racing
    // with the slot's next producer. The real seam needs no such edge: it reads nothing.
    kernel_edge_.fetch_add(1, std::memory_order_release);
    int rc = core::Syscalls::IoSubmit(ctx, nr, iocbs);
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < rc; ++i) submitted_.insert(data[i]);
    return rc;
  }
  int IoGetEvents(io_context_t ctx, long min_nr, long nr, struct io_event* events,
                  struct timespec* timeout) override {
    getevents_gate.Pass();
    getevents_calls.fetch_add(1);
    if (Take(getevents_error_count)) {
      int error = getevents_error.load();
      if (error == -EINTR) {
        injected.getevents_eintr.fetch_add(1);
      } else {
        injected.getevents_errors.fetch_add(1);
      }
      return error;
    }
    if (Roll(&RandomFaultRates::getevents_eintr)) {
      injected.getevents_eintr.fetch_add(1);
      return -EINTR;
    }
    if (Take(getevents_short_count) || (nr > 1 && Roll(&RandomFaultRates::getevents_short))) {
      injected.getevents_short.fetch_add(1);
      nr = 1;
      if (min_nr > nr) min_nr = nr;
    }
    int got = core::Syscalls::IoGetEvents(ctx, min_nr, nr, events, timeout);
    if (got > 0) kernel_edge_.load(std::memory_order_acquire);  // see IoSubmit
    return got;
  }
  // A read kaio does in place of io_submit (Engine::ReadNow) gives way to the tests that hold or fail
  // io_submit: while the submit gate is closed, or for the bad fd (fail_fd), it says EINVAL, and the
  // request goes on the usual way, into io_submit, where the test holds or fails it. (Held inside
  // ReadNow, a request's Cancel would wait for the attempt's outcome, as it must: see ReadNow.)
  int64_t Preadv2(int fd, const struct iovec* iov, int iovcnt, int64_t offset, int flags) override {
    preadv2_calls.fetch_add(1);
    if (submit_gate.closed() || fd == fail_fd.load()) return -EINVAL;
    if (Take(preadv2_eagain_count) || Roll(&RandomFaultRates::read_now_eagain)) {
      injected.read_now_eagain.fetch_add(1);
      return -EAGAIN;
    }
    return core::Syscalls::Preadv2(fd, iov, iovcnt, offset, flags);
  }
  int EventFdRead(int fd, uint64_t* value) override {
    if (Take(eventfd_read_error_count) || Roll(&RandomFaultRates::eventfd_read_eio)) {
      injected.eventfd_read.fetch_add(1);
      return -EIO;
    }
    return core::Syscalls::EventFdRead(fd, value);
  }

 private:
  static bool Take(std::atomic<int>& count) {
    int n = count.load();
    while (n > 0) {
      if (count.compare_exchange_weak(n, n - 1)) return true;
    }
    return false;
  }
  void CountSubmitError(int error) {
    if (error == -EAGAIN || error == 0) {
      injected.submit_eagain.fetch_add(1);
    } else if (error == -EINTR) {
      injected.submit_eintr.fetch_add(1);
    } else {
      injected.submit_request_errors.fetch_add(1);
    }
  }
  uint64_t NextRandom() {
    std::lock_guard<std::mutex> lock(mu_);
    uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // True with probability rates_.*rate per mille, when random faults are on.
  bool Roll(int RandomFaultRates::*rate) {
    if (!random_on_.load(std::memory_order_acquire)) return false;
    int per_mille;
    {
      std::lock_guard<std::mutex> lock(mu_);
      per_mille = rates_.*rate;
    }
    return per_mille > 0 && static_cast<int>(NextRandom() % 1000) < per_mille;
  }

  std::mutex mu_;
  std::set<void*> submitted_;
  std::atomic<uintptr_t> context_{0};
  std::atomic<uint64_t> kernel_edge_{0};
  std::atomic<bool> random_on_{false};
  uint64_t rng_state_ = 0;  // guarded by mu_
  RandomFaultRates rates_;  // guarded by mu_
};

}  // namespace kaio::testing

#endif  // KAIO_TESTS_FAULT_SYSCALLS_H_
