// The raw libaio engine: each bench thread owns an io context and runs the plainest loop there is:
// fill free slots, one io_submit for all of them, io_getevents(min 1, max iodepth). No other
// thread, no queue, no wake-up: the floor of software cost for kernel AIO.
#include <errno.h>
#include <libaio.h>

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

class LibaioRunner : public ThreadRunner {
 public:
  explicit LibaioRunner(io_context_t ctx) : io_(ctx) {}
  ~LibaioRunner() override { io_destroy(io_); }

  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    std::vector<struct iocb> cbs(static_cast<size_t>(depth));
    std::vector<struct iocb*> pending;  // prepared, not yet accepted by io_submit
    pending.reserve(static_cast<size_t>(depth));
    std::vector<struct io_event> events(static_cast<size_t>(depth));
    std::vector<int> free_slots;
    for (int i = depth - 1; i >= 0; --i) free_slots.push_back(i);
    int in_kernel = 0;
    bool stalled = false;
    const double stall_s = ctx.options().stall_timeout_s;
    while (true) {
      if (!free_slots.empty() && ctx.MayStart()) {
        const int64_t now = NowNs();
        while (!free_slots.empty() && ctx.MayStart()) {
          int slot = free_slots.back();
          free_slots.pop_back();
          ctx.Prepare(slot);
          IoOp& op = ctx.op(slot);
          op.submit_ns = now;
          struct iocb* cb = &cbs[static_cast<size_t>(slot)];
          if (op.write) {
            io_prep_pwrite(cb, op.fd, op.buf, op.len, op.offset);
          } else {
            io_prep_pread(cb, op.fd, op.buf, op.len, op.offset);
          }
          cb->data = reinterpret_cast<void*>(static_cast<uintptr_t>(slot));
          pending.push_back(cb);
        }
      }
      // Submit what is pending; a partial submission or EAGAIN leaves the rest for after a reap.
      size_t sent = 0;
      while (sent < pending.size()) {
        int rc = io_submit(io_, static_cast<long>(pending.size() - sent), pending.data() + sent);
        if (rc > 0) {
          sent += static_cast<size_t>(rc);
          in_kernel += rc;
          continue;
        }
        if (rc == -EINTR) continue;
        if (rc == -EAGAIN || rc == 0) {
          if (in_kernel == 0) return absl::ResourceExhaustedError("libaio: io_submit EAGAIN with nothing in flight");
          break;
        }
        // The first pending iocb was refused: it completes with that error.
        int slot = static_cast<int>(reinterpret_cast<uintptr_t>(pending[sent]->data));
        ctx.Finish(slot, rc, NowNs());
        free_slots.push_back(slot);
        ++sent;
      }
      pending.erase(pending.begin(), pending.begin() + static_cast<long>(sent));
      if (in_kernel == 0) {
        if (pending.empty() && (free_slots.empty() || !ctx.MayStart())) break;
        continue;
      }
      struct timespec timeout = {static_cast<time_t>(stall_s), static_cast<long>((stall_s - static_cast<double>(static_cast<time_t>(stall_s))) * 1e9)};
      int got = io_getevents(io_, 1, depth, events.data(), &timeout);
      if (got == -EINTR) continue;
      if (got < 0) return absl::InternalError(absl::StrCat("libaio: io_getevents: ", std::strerror(-got)));
      if (got == 0) {
        if (!stalled) ReportStall(ctx, StallError("libaio", ctx.id(), in_kernel, stall_s));
        stalled = true;
        continue;
      }
      const int64_t now = NowNs();
      for (int i = 0; i < got; ++i) {
        int slot = static_cast<int>(reinterpret_cast<uintptr_t>(events[static_cast<size_t>(i)].data));
        ctx.Finish(slot, static_cast<long>(events[static_cast<size_t>(i)].res), now);
        free_slots.push_back(slot);
      }
      in_kernel -= got;
    }
    return absl::OkStatus();
  }

 private:
  io_context_t io_;
};

class LibaioEngine : public Engine {
 public:
  explicit LibaioEngine(const Options& o) : depth_(o.iodepth) {}
  std::string name() const override { return "libaio"; }
  std::string Describe() const override {
    return absl::StrCat("raw io_submit/io_getevents loop, one io context (nr_events=", depth_, ") per thread");
  }
  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx& ctx) override {
    io_context_t io = nullptr;
    int rc = io_setup(ctx.depth(), &io);
    if (rc < 0) return absl::ErrnoToStatus(-rc, absl::StrCat("libaio: io_setup(", ctx.depth(), ")"));
    return std::unique_ptr<ThreadRunner>(new LibaioRunner(io));
  }

 private:
  int depth_;
};

}  // namespace

std::unique_ptr<Engine> MakeLibaioEngine(const Options& options) { return std::make_unique<LibaioEngine>(options); }

}  // namespace kaio_bench
