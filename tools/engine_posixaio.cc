// glibc's POSIX AIO (aio_read/aio_write, aio_suspend, aio_error/aio_return), used much the way fio's
// posixaio engine uses it: keep iodepth aiocbs in flight, aio_suspend on the oldest few (at most 8,
// like fio: glibc's aio_suspend registers on every listed request under its global lock, so a long
// list costs O(list) per wake-up), then collect every finished one with aio_error/aio_return.
// glibc runs the requests on its own helper threads (one per file descriptor at a time, so requests
// on one fd are serialised); their CPU shows up in the whole-process figure.
#include <aio.h>
#include <errno.h>

#include <cstring>
#include <deque>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

constexpr size_t kSuspendEntries = 8;

class PosixAioRunner : public ThreadRunner {
 public:
  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    std::vector<struct aiocb> cbs(static_cast<size_t>(depth));
    std::vector<const struct aiocb*> list(static_cast<size_t>(depth), nullptr);  // in flight, or null
    std::deque<int> order;  // slots in flight, oldest first
    std::vector<const struct aiocb*> suspend;
    std::vector<int> free_slots;
    for (int i = depth - 1; i >= 0; --i) free_slots.push_back(i);
    int in_flight = 0;
    bool stalled = false;
    const double stall_s = ctx.options().stall_timeout_s;
    while (true) {
      if (!free_slots.empty() && ctx.MayStart()) {
        const int64_t now = NowNs();
        while (!free_slots.empty() && ctx.MayStart()) {
          int slot = free_slots.back();
          ctx.Prepare(slot);
          IoOp& op = ctx.op(slot);
          op.submit_ns = now;
          struct aiocb* cb = &cbs[static_cast<size_t>(slot)];
          std::memset(cb, 0, sizeof(*cb));
          cb->aio_fildes = op.fd;
          cb->aio_buf = op.buf;
          cb->aio_nbytes = op.len;
          cb->aio_offset = op.offset;
          cb->aio_sigevent.sigev_notify = SIGEV_NONE;
          int rc = op.write ? aio_write(cb) : aio_read(cb);
          if (rc != 0) {
            if (errno == EAGAIN && in_flight > 0) break;  // glibc's queue is full: reap first
            return absl::ErrnoToStatus(errno, op.write ? "posixaio: aio_write" : "posixaio: aio_read");
          }
          free_slots.pop_back();
          list[static_cast<size_t>(slot)] = cb;
          order.push_back(slot);
          ++in_flight;
        }
      }
      if (in_flight == 0) break;
      struct timespec timeout = {static_cast<time_t>(stall_s),
                                 static_cast<long>((stall_s - static_cast<double>(static_cast<time_t>(stall_s))) * 1e9)};
      suspend.clear();
      for (size_t i = 0; i < order.size() && i < kSuspendEntries; ++i) suspend.push_back(list[static_cast<size_t>(order[i])]);
      int rc = aio_suspend(suspend.data(), static_cast<int>(suspend.size()), &timeout);
      if (rc != 0 && errno == EAGAIN) {
        // No completion for stall_timeout: report it, stop starting I/O, keep waiting for the
        // requests in flight (glibc's threads write into our buffers).
        if (!stalled) ReportStall(ctx, StallError("posixaio", ctx.id(), in_flight, stall_s));
        stalled = true;
        continue;
      }
      if (rc != 0 && errno != EINTR) return absl::ErrnoToStatus(errno, "posixaio: aio_suspend");
      const int64_t now = NowNs();
      size_t kept = 0;
      for (size_t i = 0; i < order.size(); ++i) {
        int slot = order[i];
        const struct aiocb* cb = list[static_cast<size_t>(slot)];
        int err = aio_error(cb);
        if (err == EINPROGRESS) {
          order[kept++] = slot;
          continue;
        }
        ssize_t res = aio_return(const_cast<struct aiocb*>(cb));
        ctx.Finish(slot, res < 0 ? -err : res, now);
        list[static_cast<size_t>(slot)] = nullptr;
        free_slots.push_back(slot);
        --in_flight;
      }
      order.resize(kept);
    }
    return absl::OkStatus();
  }
};

class PosixAioEngine : public Engine {
 public:
  std::string name() const override { return "posixaio"; }
  std::string Describe() const override {
    return "glibc aio_read/aio_write + aio_suspend on the 8 oldest (glibc defaults: aio_threads=20, one request per fd at a time)";
  }
  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx&) override {
    return std::unique_ptr<ThreadRunner>(new PosixAioRunner());
  }
};

}  // namespace

std::unique_ptr<Engine> MakePosixAioEngine(const Options&) { return std::make_unique<PosixAioEngine>(); }

}  // namespace kaio_bench
