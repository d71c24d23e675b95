// The kaio engine: one kaio::Service for the run, one Requester per bench thread.
#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "kaio/types.h"
#include "tools/bench.h"

namespace kaio_bench {
namespace {

class KaioRunner : public ThreadRunner {
 public:
  KaioRunner(std::unique_ptr<kaio::Requester> requester, const kaio::Service& service, bool spin)
      : requester_(std::move(requester)), service_(service), spin_(spin) {}

  absl::Status Run(ThreadCtx& ctx) override {
    const int depth = ctx.depth();
    const absl::Duration stall = absl::Seconds(ctx.options().stall_timeout_s);
    std::vector<int> free_slots;
    for (int i = depth - 1; i >= 0; --i) free_slots.push_back(i);
    std::vector<kaio::Completion> done(static_cast<size_t>(depth));
    int in_flight = 0;
    while (true) {
      if (!free_slots.empty() && ctx.MayStart()) {
        const int64_t now = NowNs();
        while (!free_slots.empty() && ctx.MayStart()) {
          int slot = free_slots.back();
          ctx.Prepare(slot);
          IoOp& op = ctx.op(slot);
          op.submit_ns = now;
          absl::StatusOr<kaio::Ticket> ticket =
              op.write ? requester_->Write(op.fd, op.buf, op.len, op.offset, static_cast<uint64_t>(slot))
                       : requester_->Read(op.fd, op.buf, op.len, op.offset, static_cast<uint64_t>(slot));
          if (!ticket.ok()) {
            ctx.Fail(ticket.status());
            break;
          }
          free_slots.pop_back();
          ++in_flight;
        }
      }
      if (in_flight == 0) break;
      size_t n;
      if (spin_) {
        // Thread-per-core style: never sleep in kaio, poll until something is there.
        const int64_t deadline = NowNs() + static_cast<int64_t>(ctx.options().stall_timeout_s * 1e9);
        do {
          n = requester_->Poll(absl::MakeSpan(done));
        } while (n == 0 && NowNs() < deadline);
      } else {
        n = requester_->Wait(absl::MakeSpan(done), 1, stall);
      }
      if (n == 0) {
        // Nothing for stall_timeout: report, then wait for the requests anyway (their buffers are
        // ours, and the Requester's destructor would wait for them too).
        absl::Status s = StallError("kaio", ctx.id(), in_flight, ctx.options().stall_timeout_s);
        ServiceStatsLine(&s);
        ReportStall(ctx, s);
        n = requester_->Wait(absl::MakeSpan(done), 1);
      }
      const int64_t now = NowNs();
      for (size_t i = 0; i < n; ++i) {
        int slot = static_cast<int>(done[i].tag);
        ctx.Finish(slot, done[i].result, now);
        free_slots.push_back(slot);
      }
      in_flight -= static_cast<int>(n);
    }
    return absl::OkStatus();
  }

 private:
  void ServiceStatsLine(absl::Status* s) const {
    kaio::ServiceStats st = service_.Stats();
    *s = absl::Status(s->code(), absl::StrCat(s->message(), "; service: accepted ", st.requests_accepted,
                                              " completed ", st.requests_completed, " in_flight ", st.in_flight,
                                              " kernel_submitted ", st.kernel_submitted, " io_submit_calls ",
                                              st.io_submit_calls, " eagain ", st.io_submit_eagain, " pool ",
                                              st.pool_requests, " nowait_retries ", st.nowait_retries));
  }

  std::unique_ptr<kaio::Requester> requester_;
  const kaio::Service& service_;
  const bool spin_;
};

class KaioEngine : public Engine {
 public:
  KaioEngine(const Options& o, bool inline_io, std::string name)
      : spin_(o.kaio_spin), inline_io_(inline_io), name_(std::move(name)) {
    options_.queue_depth = o.kaio_queue_depth > 0 ? o.kaio_queue_depth : std::max(128, o.threads * o.iodepth);
    options_.submit_batch = o.kaio_submit_batch;
    options_.device_submit_chunk = o.kaio_device_chunk;
    options_.reap_batch = o.kaio_reap_batch;
    options_.fallback_threads = o.kaio_fallback_threads;
    options_.submitter_cpu = o.kaio_submitter_cpu;
    options_.reaper_cpu = o.kaio_reaper_cpu;
  }

  std::string name() const override { return name_; }
  std::string Describe() const override {
    return absl::StrFormat("kaio::Service queue_depth=%d submit_batch=%d device_submit_chunk=%d reap_batch=%d "
                           "fallback_threads=%d; %s; %s%s",
                           options_.queue_depth, options_.submit_batch, options_.device_submit_chunk, options_.reap_batch,
                           options_.fallback_threads,
                           inline_io_ ? "inline_io: requesters submit and reap on their own thread"
                                      : "every request through the submitter and reaper threads",
                           spin_ ? "requesters spin on Poll()" : "requesters block in Wait(min_count=1)",
                           options_.submitter_cpu >= 0 || options_.reaper_cpu >= 0
                               ? absl::StrFormat(" submitter_cpu=%d reaper_cpu=%d", options_.submitter_cpu,
                                                 options_.reaper_cpu)
                               : "");
  }

  absl::Status Setup(RunShared&) override {
    absl::StatusOr<std::unique_ptr<kaio::Service>> service = kaio::Service::Create(options_);
    if (!service.ok()) return service.status();
    service_ = *std::move(service);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx&) override {
    kaio::RequesterOptions requester_options;
    requester_options.inline_io = inline_io_;
    absl::StatusOr<std::unique_ptr<kaio::Requester>> requester = kaio::Requester::Create(*service_, requester_options);
    if (!requester.ok()) return requester.status();
    return std::unique_ptr<ThreadRunner>(new KaioRunner(*std::move(requester), *service_, spin_));
  }

  void OnMeasureStart() override { start_ = service_->Stats(); }
  void OnMeasureEnd() override { end_ = service_->Stats(); }

  void Teardown() override {
    total_ = service_->Stats();
    service_.reset();  // Shutdown: waits for everything accepted (nothing is, by now)
  }

  std::vector<std::pair<std::string, double>> Counters() const override {
    auto d = [&](uint64_t kaio::ServiceStats::*field) {
      return static_cast<double>(end_.*field - start_.*field);
    };
    double calls = d(&kaio::ServiceStats::io_submit_calls);
    double submitted = d(&kaio::ServiceStats::kernel_submitted);
    return {
        {"requests_completed", d(&kaio::ServiceStats::requests_completed)},
        {"kernel_submitted", submitted},
        {"io_submit_calls", calls},
        {"average_batch", calls == 0 ? 0 : submitted / calls},
        {"io_submit_eagain", d(&kaio::ServiceStats::io_submit_eagain)},
        {"pool_requests", d(&kaio::ServiceStats::pool_requests)},
        {"nowait_retries", d(&kaio::ServiceStats::nowait_retries)},
        {"requests_failed", d(&kaio::ServiceStats::requests_failed)},
        {"max_io_submit_us", static_cast<double>(total_.max_io_submit_ns) / 1000.0},
        {"contexts_created", static_cast<double>(total_.contexts_created)},
        {"pool_threads", static_cast<double>(total_.pool_threads)},
        {"inline_submitted", d(&kaio::ServiceStats::inline_submitted)},
        {"inline_reaped", d(&kaio::ServiceStats::inline_reaped)},
        {"read_now", d(&kaio::ServiceStats::read_now)},
    };
  }

  std::string HangReport() const override {
    if (service_ == nullptr) return "";
    kaio::ServiceStats st = service_->Stats();
    return absl::StrCat("kaio ServiceStats: accepted=", st.requests_accepted, " completed=", st.requests_completed,
                        " in_flight=", st.in_flight, " kernel_submitted=", st.kernel_submitted,
                        " io_submit_calls=", st.io_submit_calls, " io_submit_eagain=", st.io_submit_eagain,
                        " pool_requests=", st.pool_requests, " nowait_retries=", st.nowait_retries,
                        " failed=", st.requests_failed, " contexts_created=", st.contexts_created,
                        " contexts_released=", st.contexts_released, " pool_threads=", st.pool_threads);
  }

 private:
  const bool spin_;
  const bool inline_io_;
  const std::string name_;
  kaio::ServiceOptions options_;
  std::unique_ptr<kaio::Service> service_;
  kaio::ServiceStats start_, end_, total_;
};

}  // namespace

std::unique_ptr<Engine> MakeKaioEngine(const Options& options, bool inline_io, std::string name) {
  return std::make_unique<KaioEngine>(options, inline_io, std::move(name));
}

}  // namespace kaio_bench
