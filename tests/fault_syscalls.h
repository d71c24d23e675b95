// A Syscalls seam for tests: passes through to the kernel, but can hold io_submit or io_getevents
// at a gate, count what was submitted, and inject errors.
#ifndef KAIO_TESTS_FAULT_SYSCALLS_H_
#define KAIO_TESTS_FAULT_SYSCALLS_H_

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>

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

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
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

  // Data pointers (slot indexes) of every iocb the kernel accepted.
  bool WasSubmitted(void* data) {
    std::lock_guard<std::mutex> lock(mu_);
    return submitted_.count(data) > 0;
  }

  int IoSetup(int max_events, io_context_t* ctx) override {
    if (Take(setup_error_count)) return -EAGAIN;
    return core::Syscalls::IoSetup(max_events, ctx);
  }
  int IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) override {
    submit_gate.Pass();
    submit_calls.fetch_add(1);
    if (Take(submit_error_count)) return submit_error.load();
    if (Take(submit_partial_count)) nr = 1;
    int rc = core::Syscalls::IoSubmit(ctx, nr, iocbs);
    std::lock_guard<std::mutex> lock(mu_);
    for (int i = 0; i < rc; ++i) submitted_.insert(iocbs[i]->data);
    return rc;
  }
  int IoGetEvents(io_context_t ctx, long min_nr, long nr, struct io_event* events,
                  struct timespec* timeout) override {
    getevents_gate.Pass();
    if (Take(getevents_error_count)) return getevents_error.load();
    if (Take(getevents_short_count)) nr = 1;
    return core::Syscalls::IoGetEvents(ctx, min_nr, nr, events, timeout);
  }
  int EventFdRead(int fd, uint64_t* value) override {
    if (Take(eventfd_read_error_count)) return -EIO;
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
  std::mutex mu_;
  std::set<void*> submitted_;
};

}  // namespace kaio::testing

#endif  // KAIO_TESTS_FAULT_SYSCALLS_H_
