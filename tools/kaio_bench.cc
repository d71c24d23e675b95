// kaio_bench: a fio-like load generator that runs one workload through several engines (kaio, a raw
// libaio loop, glibc POSIX AIO, a pread thread pool, io_uring, and optionally fio itself) and
// prints IOPS, bandwidth, latency percentiles and whole-process CPU per I/O side by side, with
// ratios against kaio. See --help, and BENCHMARKS.md for the figures on the reference machine.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <chrono>
#include <cstring>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <latch>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "tools/bench.h"
#include "tools/report.h"
#include "tools/run.h"

namespace kaio_bench {
namespace {

volatile std::sig_atomic_t g_interrupted = 0;

void OnSigint(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second ^C ends the process
}

struct Usage {
  double user_s = 0, sys_s = 0;
  uint64_t nvcsw = 0, nivcsw = 0;
  static Usage Now() {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    Usage u;
    u.user_s = static_cast<double>(ru.ru_utime.tv_sec) + static_cast<double>(ru.ru_utime.tv_usec) / 1e6;
    u.sys_s = static_cast<double>(ru.ru_stime.tv_sec) + static_cast<double>(ru.ru_stime.tv_usec) / 1e6;
    u.nvcsw = static_cast<uint64_t>(ru.ru_nvcsw);
    u.nivcsw = static_cast<uint64_t>(ru.ru_nivcsw);
    return u;
  }
};

std::unique_ptr<Engine> MakeEngine(const std::string& name, const Options& o) {
  if (name == "kaio") return MakeKaioEngine(o, o.kaio_inline, name);
  if (name == "kaio-threads") return MakeKaioEngine(o, false, name);
  if (name == "libaio") return MakeLibaioEngine(o);
  if (name == "posixaio") return MakePosixAioEngine(o);
  if (name == "threadpool") return MakeThreadPoolEngine(o);
  if (name == "io_uring") return MakeIoUringEngine(o);
  return nullptr;
}

class Progress {
 public:
  Progress(bool enabled, std::string label) : enabled_(enabled), label_(std::move(label)) {}
  ~Progress() { Clear(); }
  void Show(const char* phase, double elapsed, double total, double iops) {
    if (!enabled_) return;
    std::fprintf(stderr, "\r\033[K%s %s %4.1f/%.1f s  %s IOPS", label_.c_str(), phase, elapsed, total,
                 iops >= 1000 ? absl::StrFormat("%.1fk", iops / 1000).c_str() : absl::StrFormat("%.0f", iops).c_str());
    std::fflush(stderr);
    shown_ = true;
  }
  void Clear() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

 private:
  bool enabled_;
  std::string label_;
  bool shown_ = false;
};

// Runs one engine over the workload. Exits the process (after removing temporary files) if the
// engine hangs: its threads own buffers the kernel may still write into.
EngineResult RunEngine(const std::string& name, const Options& o, std::vector<BenchFile>& files,
                       const std::string& label, bool progress_enabled) {
  EngineResult r;
  r.engine = name;
  std::unique_ptr<Engine> engine = MakeEngine(name, o);
  r.description = engine->Describe();

  RunShared shared;
  shared.options = &o;
  int flags = (o.has_writes() ? O_RDWR : O_RDONLY) | (o.direct ? O_DIRECT : 0) | O_CLOEXEC;
  for (const BenchFile& f : files) {
    int fd = open(f.path.c_str(), flags);
    if (fd < 0) {
      r.error = absl::StrCat("open ", f.path, ": ", std::strerror(errno));
      for (int open_fd : shared.fds) close(open_fd);
      return r;
    }
    shared.fds.push_back(fd);
  }
  auto close_fds = [&] {
    for (int fd : shared.fds) close(fd);
  };
  if (absl::Status s = PrimeCache(o, shared.fds); !s.ok()) {
    r.error = std::string(s.message());
    close_fds();
    return r;
  }
  if (absl::Status s = engine->Setup(shared); !s.ok()) {
    r.error = absl::StrCat("setup: ", s.ToString());
    close_fds();
    return r;
  }

  const int n = o.threads;
  std::vector<std::unique_ptr<ThreadCtx>> ctxs;
  for (int i = 0; i < n; ++i) {
    uint64_t budget = 0;
    if (o.ops > 0) {
      budget = o.ops / static_cast<uint64_t>(n) + (static_cast<uint64_t>(i) < o.ops % static_cast<uint64_t>(n) ? 1 : 0);
    }
    ctxs.push_back(std::make_unique<ThreadCtx>(shared, i, budget));
  }
  std::latch ready(n);
  std::latch go(1);
  std::mutex done_mu;
  std::condition_variable done_cv;
  int finished = 0;
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      ThreadCtx& ctx = *ctxs[static_cast<size_t>(i)];
      absl::StatusOr<std::unique_ptr<ThreadRunner>> runner = engine->NewThread(ctx);
      if (!runner.ok()) ctx.Fail(runner.status());
      ready.count_down();
      go.wait();
      if (runner.ok()) {
        absl::Status s = (*runner)->Run(ctx);
        if (!s.ok()) ctx.Fail(s);
        runner->reset();
      }
      std::lock_guard<std::mutex> lock(done_mu);
      ++finished;
      done_cv.notify_all();
    });
  }
  ready.wait();

  Progress progress(progress_enabled, label);
  auto total_progress = [&] {
    uint64_t sum = 0;
    for (const auto& c : ctxs) sum += c->progress();
    return sum;
  };
  const auto tick = std::chrono::milliseconds(200);
  Usage u0, u1;
  int64_t t0 = 0, t1 = 0;
  if (o.ops > 0) {
    shared.phase.store(kMeasure);
    u0 = Usage::Now();
    engine->OnMeasureStart();
    t0 = NowNs();
    go.count_down();
    uint64_t last_ops = 0;
    int64_t last_t = t0;
    while (true) {
      std::unique_lock<std::mutex> lock(done_mu);
      if (done_cv.wait_for(lock, tick, [&] { return finished == n; })) break;
      lock.unlock();
      if (g_interrupted) {
        shared.phase.store(kStop);
        r.interrupted = true;
      }
      int64_t now = NowNs();
      uint64_t ops = total_progress();
      progress.Show("ops", static_cast<double>(ops), static_cast<double>(o.ops),
                    static_cast<double>(ops - last_ops) * 1e9 / static_cast<double>(now - last_t));
      last_ops = ops;
      last_t = now;
    }
    t1 = NowNs();
    u1 = Usage::Now();
    engine->OnMeasureEnd();
  } else {
    const int64_t start = NowNs();
    go.count_down();
    const int64_t ramp_end = start + static_cast<int64_t>(o.ramp_s * 1e9);
    while (NowNs() < ramp_end && !g_interrupted && !shared.failed.load()) {
      progress.Show("ramp   ", static_cast<double>(NowNs() - start) / 1e9, o.ramp_s, 0);
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(tick, std::chrono::nanoseconds(std::max<int64_t>(0, ramp_end - NowNs()))));
    }
    int expected = kRamp;
    shared.phase.compare_exchange_strong(expected, kMeasure);
    u0 = Usage::Now();
    engine->OnMeasureStart();
    t0 = NowNs();
    const int64_t end = t0 + static_cast<int64_t>(o.runtime_s * 1e9);
    uint64_t last_ops = 0;
    int64_t last_t = t0;
    while (true) {
      int64_t now = NowNs();
      if (now >= end || shared.failed.load()) break;
      if (g_interrupted) {
        r.interrupted = true;
        break;
      }
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(tick, std::chrono::nanoseconds(end - now)));
      now = NowNs();
      uint64_t ops = total_progress();
      progress.Show("measure", static_cast<double>(now - t0) / 1e9, o.runtime_s,
                    static_cast<double>(ops - last_ops) * 1e9 / static_cast<double>(now - last_t));
      last_ops = ops;
      last_t = now;
    }
    shared.phase.store(kStop);
    t1 = NowNs();
    u1 = Usage::Now();
    engine->OnMeasureEnd();
  }
  progress.Clear();

  // Drain: every thread finishes what it has in flight. An engine that cannot is hung.
  {
    std::unique_lock<std::mutex> lock(done_mu);
    auto limit = std::chrono::duration<double>(o.stall_timeout_s + 5);
    if (!done_cv.wait_for(lock, limit, [&] { return finished == n; })) {
      std::fprintf(stderr,
                   "\nkaio_bench: engine %s HUNG: %d of %d threads still waiting for their I/O %.0f s after the end "
                   "of the run.\n",
                   name.c_str(), n - finished, n, o.stall_timeout_s + 5);
      std::string report = engine->HangReport();
      if (!report.empty()) std::fprintf(stderr, "kaio_bench: %s\n", report.c_str());
      for (const auto& c : ctxs) {
        if (!c->status().ok()) std::fprintf(stderr, "kaio_bench: thread %d: %s\n", c->id(), c->status().ToString().c_str());
      }
      RemoveTemporaryFiles(files);
      std::fflush(stderr);
      std::_Exit(3);
    }
  }
  for (std::thread& t : threads) t.join();
  engine->Teardown();
  close_fds();

  Histogram hist;
  r.ok = true;
  for (const auto& c : ctxs) {
    hist.Merge(c->histogram());
    r.ops += c->ops_done();
    r.bytes += c->bytes();
    r.writes += c->writes();
    r.io_errors += c->errors();
    r.short_ios += c->short_ios();
    if (r.first_io_error.empty()) r.first_io_error = c->first_error();
    if (!c->status().ok() && r.ok) {
      r.ok = false;
      r.error = absl::StrCat("thread ", c->id(), ": ", c->status().ToString());
    }
  }
  r.seconds = static_cast<double>(t1 - t0) / 1e9;
  r.has_histogram = true;
  r.histogram = std::move(hist);
  r.LatencyFromHistogram();
  r.user_s = u1.user_s - u0.user_s;
  r.sys_s = u1.sys_s - u0.sys_s;
  r.voluntary_csw = u1.nvcsw - u0.nvcsw;
  r.involuntary_csw = u1.nivcsw - u0.nivcsw;
  r.counters = engine->Counters();
  if (r.ok && r.ops == 0 && r.io_errors > 0) {
    r.ok = false;
    r.error = absl::StrCat("every I/O failed; first: ", r.first_io_error);
  }
  return r;
}

std::string LocalTime() {
  std::time_t now = std::time(nullptr);
  char buf[64];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
  return buf;
}

int Main(int argc, char** argv) {
  absl::StatusOr<Options> parsed = ParseOptions(argc, argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "kaio_bench: %s\n", std::string(parsed.status().message()).c_str());
    return 2;
  }
  const Options& o = *parsed;
  const bool tty = isatty(STDERR_FILENO) != 0;
  const bool progress = o.progress == -1 ? tty : o.progress == 1;
  std::signal(SIGINT, OnSigint);
  std::signal(SIGTERM, OnSigint);

  absl::StatusOr<std::vector<BenchFile>> made = SetUpFiles(o, true);
  if (!made.ok()) {
    std::fprintf(stderr, "kaio_bench: %s\n", made.status().ToString().c_str());
    return 1;
  }
  std::vector<BenchFile> files = *std::move(made);

  Environment env;
  struct utsname un;
  if (uname(&un) == 0) env.kernel = un.release;
  env.cpus = static_cast<int>(std::thread::hardware_concurrency());
  env.filesystem = FilesystemType(files[0].path);
  for (const BenchFile& f : files) env.files.push_back(f.path);
  env.temporary_files = files[0].temporary;
  env.started_at = LocalTime();
  if (o.direct && env.filesystem == "tmpfs") {
    std::fprintf(stderr, "kaio_bench: warning: the files are on tmpfs: O_DIRECT there measures memory, not a device\n");
  }
  if (progress || o.json) std::fprintf(stderr, "kaio_bench: %s\n", DescribeWorkload(o).c_str());

  std::vector<EngineResult> results(o.engines.size());
  for (int round = 0; round < o.rounds && !g_interrupted; ++round) {
    for (size_t i = 0; i < o.engines.size(); ++i) {
      if (g_interrupted) break;
      const std::string& name = o.engines[i];
      std::string label = o.rounds > 1 ? absl::StrFormat("[round %d/%d %zu/%zu] %-10s", round + 1, o.rounds, i + 1,
                                                         o.engines.size(), name)
                                       : absl::StrFormat("[%zu/%zu] %-10s", i + 1, o.engines.size(), name);
      EngineResult r;
      if (absl::StartsWith(name, "fio-")) {
        if (progress) {
          std::fprintf(stderr, "%s running fio (%.1f s) ...", label.c_str(), o.ops ? 0.0 : o.ramp_s + o.runtime_s);
          std::fflush(stderr);
        }
        r = RunFio(o, files, name.substr(4));
        if (progress) std::fprintf(stderr, "\r\033[K");
      } else {
        r = RunEngine(name, o, files, label, progress);
      }
      if (progress) {
        if (r.ok || r.ops > 0) {
          std::fprintf(stderr, "%s %9.1fk IOPS  %6.2f us CPU/op  p99 %s us%s\n", label.c_str(), r.iops() / 1000,
                       r.cpu_us_per_op(), absl::StrFormat("%.0f", r.p99_us).c_str(), r.ok ? "" : "  FAILED");
        } else {
          std::fprintf(stderr, "%s FAILED: %s\n", label.c_str(), r.error.c_str());
        }
      }
      MergeRound(results[i], r);
    }
  }
  // Engines an interrupt kept from running at all.
  results.erase(std::remove_if(results.begin(), results.end(), [](const EngineResult& r) { return r.engine.empty(); }),
                results.end());
  RemoveTemporaryFiles(files);

  if (!o.json_file.empty()) {
    FILE* f = std::fopen(o.json_file.c_str(), "w");
    if (f == nullptr) {
      std::fprintf(stderr, "kaio_bench: cannot write %s: %s\n", o.json_file.c_str(), std::strerror(errno));
    } else {
      std::fputs(ToJson(o, env, results).c_str(), f);
      std::fclose(f);
    }
  }
  if (o.json) {
    std::fputs(ToJson(o, env, results).c_str(), stdout);
  } else {
    PrintTable(o, env, results, stdout);
  }
  if (g_interrupted) {
    std::fprintf(stderr, "kaio_bench: interrupted\n");
    return 130;
  }
  for (const EngineResult& r : results) {
    if (!r.ok) return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kaio_bench

int main(int argc, char** argv) { return kaio_bench::Main(argc, argv); }
