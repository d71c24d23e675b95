// glibc's POSIX AIO (aio_read/aio_write, aio_suspend, aio_error/aio_return), used the way fio's
// posixaio engine uses it: keep iodepth aiocbs in flight, aio_suspend on them, then scan.
// glibc runs the requests on its own helper threads (one per file descriptor at a time, so requests
// on one fd are serialised); their CPU shows up in the whole-process figure.
#include <aio.h>
#include <errno.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

class PosixAioRunner : public ThreadRunner {
 public:
  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    std::vector<struct aiocb> cbs(static_cast<size_t>(depth));
    std::vector<const struct aiocb*> list(static_cast<size_t>(depth), nullptr);  // in flight, or null
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
          ++in_flight;
        }
      }
      if (in_flight == 0) break;
      struct timespec timeout = {static_cast<time_t>(stall_s),
                                 static_cast<long>((stall_s - static_cast<double>(static_cast<time_t>(stall_s))) * 1e9)};
      int rc = aio_suspend(list.data(), depth, &timeout);
      if (rc != 0 && errno == EAGAIN) {
        // No completion for stall_timeout: report it, stop starting I/O, keep waiting for the
        // requests in flight (glibc's threads write into our buffers).
        if (!stalled) ReportStall(ctx, StallError("posixaio", ctx.id(), in_flight, stall_s));
        stalled = true;
        continue;
      }
      if (rc != 0 && errno != EINTR) return absl::ErrnoToStatus(errno, "posixaio: aio_suspend");
      const int64_t now = NowNs();
      for (int slot = 0; slot < depth; ++slot) {
        const struct aiocb* cb = list[static_cast<size_t>(slot)];
        if (cb == nullptr) continue;
        int err = aio_error(cb);
        if (err == EINPROGRESS) continue;
        ssize_t res = aio_return(const_cast<struct aiocb*>(cb));
        ctx.Finish(slot, res < 0 ? -err : res, now);
        list[static_cast<size_t>(slot)] = nullptr;
        free_slots.push_back(slot);
        --in_flight;
      }
    }
    return absl::OkStatus();
  }
};

class PosixAioEngine : public Engine {
 public:
  std::string name() const override { return "posixaio"; }
  std::string Describe() const override {
    return "glibc aio_read/aio_write + aio_suspend (glibc defaults: aio_threads=20, one request per fd at a time)";
  }
  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx&) override {
    return std::unique_ptr<ThreadRunner>(new PosixAioRunner());
  }
};

}  // namespace

std::unique_ptr<Engine> MakePosixAioEngine(const Options&) { return std::make_unique<PosixAioEngine>(); }

}  // namespace kaio_bench
