// The io_uring engine (liburing): one ring of iodepth entries per bench thread, no SQPOLL (like
// fio's io_uring engine by default). Submission and the wait for a completion share one
// io_uring_enter call; completions are taken in batches.
#include <errno.h>
#include <liburing.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

class UringRunner : public ThreadRunner {
 public:
  UringRunner() = default;
  ~UringRunner() override {
    if (initialized_) io_uring_queue_exit(&ring_);
  }

  absl::Status Init(int depth) {
    int rc = io_uring_queue_init(static_cast<unsigned>(depth), &ring_, 0);
    if (rc < 0) return absl::ErrnoToStatus(-rc, absl::StrCat("io_uring: io_uring_queue_init(", depth, ")"));
    initialized_ = true;
    return absl::OkStatus();
  }

  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    std::vector<int> free_slots;
    for (int i = depth - 1; i >= 0; --i) free_slots.push_back(i);
    std::vector<struct io_uring_cqe*> cqes(static_cast<size_t>(depth));
    int in_flight = 0;
    bool stalled = false;
    const double stall_s = ctx.options().stall_timeout_s;
    struct __kernel_timespec timeout = {
        static_cast<long long>(stall_s),
        static_cast<long long>((stall_s - static_cast<double>(static_cast<long long>(stall_s))) * 1e9)};
    while (true) {
      if (!free_slots.empty() && ctx.MayStart()) {
        const int64_t now = NowNs();
        while (!free_slots.empty() && ctx.MayStart()) {
          struct io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
          if (sqe == nullptr) break;  // cannot happen: the ring has iodepth entries
          int slot = free_slots.back();
          free_slots.pop_back();
          ctx.Prepare(slot);
          IoOp& op = ctx.op(slot);
          op.submit_ns = now;
          if (op.write) {
            io_uring_prep_write(sqe, op.fd, op.buf, op.len, static_cast<uint64_t>(op.offset));
          } else {
            io_uring_prep_read(sqe, op.fd, op.buf, op.len, static_cast<uint64_t>(op.offset));
          }
          io_uring_sqe_set_data64(sqe, static_cast<uint64_t>(slot));
          ++in_flight;
        }
      }
      if (in_flight == 0) break;
      struct io_uring_cqe* first = nullptr;
      int rc = io_uring_submit_and_wait_timeout(&ring_, &first, 1, &timeout, nullptr);
      if (rc == -ETIME) {
        if (!stalled) ReportStall(ctx, StallError("io_uring", ctx.id(), in_flight, stall_s));
        stalled = true;
        continue;
      }
      if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        ReportStall(ctx, absl::ErrnoToStatus(-rc, "io_uring: io_uring_submit_and_wait_timeout"));
        return ctx.status();
      }
      unsigned got = io_uring_peek_batch_cqe(&ring_, cqes.data(), static_cast<unsigned>(depth));
      const int64_t now = NowNs();
      for (unsigned i = 0; i < got; ++i) {
        int slot = static_cast<int>(io_uring_cqe_get_data64(cqes[i]));
        ctx.Finish(slot, cqes[i]->res, now);
        free_slots.push_back(slot);
      }
      io_uring_cq_advance(&ring_, got);
      in_flight -= static_cast<int>(got);
    }
    return absl::OkStatus();
  }

 private:
  struct io_uring ring_ {};
  bool initialized_ = false;
};

class IoUringEngine : public Engine {
 public:
  explicit IoUringEngine(const Options& o) : depth_(o.iodepth) {}
  std::string name() const override { return "io_uring"; }
  std::string Describe() const override {
    return absl::StrCat("liburing, one ring (", depth_, " entries, no SQPOLL) per thread");
  }
  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx& ctx) override {
    auto runner = std::make_unique<UringRunner>();
    if (absl::Status s = runner->Init(ctx.depth()); !s.ok()) return s;
    return std::unique_ptr<ThreadRunner>(std::move(runner));
  }

 private:
  int depth_;
};

}  // namespace

std::unique_ptr<Engine> MakeIoUringEngine(const Options& options) { return std::make_unique<IoUringEngine>(options); }

}  // namespace kaio_bench
