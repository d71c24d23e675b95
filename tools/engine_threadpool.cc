// The thread-pool engine: what an application writes without kernel AIO. N worker threads take
// requests from one shared queue (mutex + condition variable) and run pread/pwrite; each bench
// thread collects its completions from its own queue (mutex + condition variable), sleeping only
// when it has nothing to collect.
#include <errno.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

struct Task;

// One bench thread's completions.
class CompletionQueue {
 public:
  void Push(Task* task) {
    bool wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_.push_back(task);
      wake = waiting_;
    }
    if (wake) cv_.notify_one();
  }
  // Swaps the finished tasks into `out` (empty on entry); waits up to `timeout` for at least one.
  void Take(std::vector<Task*>& out, std::chrono::duration<double> timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    if (done_.empty()) {
      waiting_ = true;
      cv_.wait_for(lock, timeout, [this] { return !done_.empty(); });
      waiting_ = false;
    }
    out.swap(done_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Task*> done_;
  bool waiting_ = false;
};

struct Task {
  IoOp* op = nullptr;
  int slot = 0;
  int64_t result = 0;
  CompletionQueue* cq = nullptr;
};

class Pool {
 public:
  explicit Pool(int workers) {
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }
  void Push(Task* const* tasks, size_t n) {
    size_t wake;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < n; ++i) queue_.push_back(tasks[i]);
      wake = std::min(n, static_cast<size_t>(idle_));
    }
    for (size_t i = 0; i < wake; ++i) cv_.notify_one();
  }

 private:
  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      while (queue_.empty() && !stop_) {
        ++idle_;
        cv_.wait(lock);
        --idle_;
      }
      if (queue_.empty()) return;  // stopping
      Task* task = queue_.front();
      queue_.pop_front();
      lock.unlock();
      const IoOp& op = *task->op;
      ssize_t n;
      do {
        n = op.write ? pwrite(op.fd, op.buf, op.len, op.offset) : pread(op.fd, op.buf, op.len, op.offset);
      } while (n < 0 && errno == EINTR);
      task->result = n < 0 ? -errno : n;
      task->cq->Push(task);
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task*> queue_;
  int idle_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

class ThreadPoolRunner : public ThreadRunner {
 public:
  explicit ThreadPoolRunner(Pool& pool) : pool_(pool) {}

  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    std::vector<Task> tasks(static_cast<size_t>(depth));
    std::vector<int> free_slots;
    for (int i = depth - 1; i >= 0; --i) {
      free_slots.push_back(i);
      tasks[static_cast<size_t>(i)].op = &ctx.op(i);
      tasks[static_cast<size_t>(i)].slot = i;
      tasks[static_cast<size_t>(i)].cq = &cq_;
    }
    std::vector<Task*> batch, done;
    int in_flight = 0;
    bool stalled = false;
    const double stall_s = ctx.options().stall_timeout_s;
    while (true) {
      if (!free_slots.empty() && ctx.MayStart()) {
        const int64_t now = NowNs();
        batch.clear();
        while (!free_slots.empty() && ctx.MayStart()) {
          int slot = free_slots.back();
          free_slots.pop_back();
          ctx.Prepare(slot);
          ctx.op(slot).submit_ns = now;
          batch.push_back(&tasks[static_cast<size_t>(slot)]);
        }
        pool_.Push(batch.data(), batch.size());
        in_flight += static_cast<int>(batch.size());
      }
      if (in_flight == 0) break;
      done.clear();
      cq_.Take(done, std::chrono::duration<double>(stall_s));
      if (done.empty()) {
        if (!stalled) ReportStall(ctx, StallError("threadpool", ctx.id(), in_flight, stall_s));
        stalled = true;
        continue;
      }
      const int64_t now = NowNs();
      for (Task* task : done) {
        ctx.Finish(task->slot, task->result, now);
        free_slots.push_back(task->slot);
      }
      in_flight -= static_cast<int>(done.size());
    }
    return absl::OkStatus();
  }

 private:
  Pool& pool_;
  CompletionQueue cq_;
};

class ThreadPoolEngine : public Engine {
 public:
  explicit ThreadPoolEngine(const Options& o)
      : workers_(o.pool_threads > 0 ? o.pool_threads : std::min(256, o.threads * o.iodepth)) {}
  std::string name() const override { return "threadpool"; }
  std::string Describe() const override {
    return absl::StrCat(workers_, " pread/pwrite workers, one shared mutex+condvar queue");
  }
  absl::Status Setup(RunShared&) override {
    pool_ = std::make_unique<Pool>(workers_);
    return absl::OkStatus();
  }
  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx&) override {
    return std::unique_ptr<ThreadRunner>(new ThreadPoolRunner(*pool_));
  }
  void Teardown() override { pool_.reset(); }

 private:
  int workers_;
  std::unique_ptr<Pool> pool_;
};

}  // namespace

std::unique_ptr<Engine> MakeThreadPoolEngine(const Options& options) {
  return std::make_unique<ThreadPoolEngine>(options);
}

}  // namespace kaio_bench
