// kaio_bench: the pieces every engine shares: options, the workload (which file, offset and direction
// each I/O takes), latency histograms, and the per-thread context an engine's loop runs against.
//
// Model (fio's): `threads` bench threads, each keeping up to `iodepth` I/Os in flight on its own
// engine handle (a kaio Requester, an io context, an io_uring, ...). Every engine sees the same
// sequence of offsets for the same seed. A run has three phases, switched by the main thread:
// ramp (I/O runs, nothing is counted), measure (completions are counted), stop (no new I/O; what is
// in flight drains, uncounted). With --ops the run is measured from the first I/O to the last.
#ifndef KAIO_TOOLS_BENCH_H_
#define KAIO_TOOLS_BENCH_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "tools/clock.h"

namespace kaio_bench {

using kaio_tools::NowNs;

// ---------------------------------------------------------------- options

enum class Pattern { kRead, kWrite, kRandRead, kRandWrite, kReadWrite, kRandRW };

struct Options {
  std::string rw = "randread";
  Pattern pattern = Pattern::kRandRead;
  uint32_t bs = 4096;
  int iodepth = 32;
  int threads = 1;
  uint64_t size = uint64_t{256} << 20;  // per file
  int nrfiles = 1;
  bool direct = true;
  bool cache_warm = true;  // buffered only: read the file into the page cache first (else drop it)
  int rwmixread = 50;
  double ramp_s = 0.5;
  double runtime_s = 4.0;
  uint64_t ops = 0;  // total per engine; 0: time based
  int rounds = 1;    // the engine list is run this many times, interleaved, and merged per engine
  std::vector<std::string> filenames;  // explicit files (kept); empty: temporary files
  std::string directory;               // where temporary files go
  uint64_t seed = 1;
  std::vector<std::string> engines;
  bool json = false;
  std::string json_file;  // also write the JSON here
  int progress = -1;  // -1: when stderr is a terminal
  double stall_timeout_s = 10;
  // Engine knobs.
  int kaio_queue_depth = 0;  // 0: max(128, threads * iodepth)
  int kaio_submit_batch = 64;
  int kaio_device_chunk = 4;
  int kaio_reap_batch = 64;
  int kaio_fallback_threads = 4;
  int kaio_submitter_cpu = -1;
  int kaio_reaper_cpu = -1;
  bool kaio_spin = false;  // requesters poll instead of sleeping in Wait
  bool kaio_inline = true;  // the `kaio` engine's requesters use RequesterOptions::inline_io
  int pool_threads = 0;  // 0: threads * iodepth, at most 256
  std::string fio = "fio";

  bool is_write_only() const { return pattern == Pattern::kWrite || pattern == Pattern::kRandWrite; }
  bool has_writes() const { return pattern != Pattern::kRead && pattern != Pattern::kRandRead; }
  bool is_random() const {
    return pattern == Pattern::kRandRead || pattern == Pattern::kRandWrite || pattern == Pattern::kRandRW;
  }
  bool is_mixed() const { return pattern == Pattern::kReadWrite || pattern == Pattern::kRandRW; }
};

// Parses argv with absl flags (the flags are defined in bench.cc; sizes are kaio_tools::Size). Prints
// the usage and exits on --help, and exits 2 on a flag absl cannot parse; the other errors are
// INVALID_ARGUMENT with the reason.
absl::StatusOr<Options> ParseOptions(int argc, char** argv);

// Flag types of kaio_bench's own. A duration: "5" or "5s" -> 5, "500ms" -> 0.5, "2m" -> 120.
struct Seconds {
  double seconds = 0;
};
absl::StatusOr<double> ParseSeconds(absl::string_view text);
bool AbslParseFlag(absl::string_view text, Seconds* out, std::string* error);
std::string AbslUnparseFlag(Seconds s);
// A count in decimal units: "100000", "100k", "1m".
struct Count {
  uint64_t value = 0;
};
bool AbslParseFlag(absl::string_view text, Count* out, std::string* error);
std::string AbslUnparseFlag(Count c);

// ---------------------------------------------------------------- latency histogram

// Log-linear buckets (64 per power of two above 64 ns): about 1.6% relative error, constant-time
// add, mergeable. Values are nanoseconds.
class Histogram {
 public:
  static constexpr int kSubBits = 6;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kBuckets = kSub * (64 - kSubBits + 1);

  Histogram() : counts_(kBuckets, 0) {}
  void Add(int64_t value_ns) {
    uint64_t v = value_ns < 0 ? 0 : static_cast<uint64_t>(value_ns);
    ++counts_[Index(v)];
    ++count_;
    sum_ += v;
    if (v > max_) max_ = v;
  }
  void Merge(const Histogram& other);
  uint64_t count() const { return count_; }
  double mean() const { return count_ == 0 ? 0 : static_cast<double>(sum_) / static_cast<double>(count_); }
  uint64_t max() const { return max_; }
  // The value at quantile q (0..1), as the middle of its bucket.
  double Quantile(double q) const;

 private:
  static int Index(uint64_t v) {
    if (v < kSub) return static_cast<int>(v);
    int exponent = 63 - __builtin_clzll(v);  // >= kSubBits
    int sub = static_cast<int>((v >> (exponent - kSubBits)) & (kSub - 1));
    return (exponent - kSubBits + 1) * kSub + sub;
  }
  static void BucketRange(int index, double* low, double* high);

  std::vector<uint64_t> counts_;
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
  uint64_t max_ = 0;
};

// ---------------------------------------------------------------- files

struct BenchFile {
  std::string path;
  bool temporary = false;
};

// One I/O as the engines see it. Each thread owns `iodepth` of them, each with its own buffer.
struct IoOp {
  int fd = -1;
  bool write = false;
  uint32_t len = 0;
  int64_t offset = 0;
  char* buf = nullptr;
  int64_t submit_ns = 0;
};

enum Phase : int { kRamp = 0, kMeasure = 1, kStop = 2 };

// Shared by the threads of one engine run.
struct RunShared {
  const Options* options = nullptr;
  std::vector<int> fds;  // one per file, opened for this engine run
  std::atomic<int> phase{kRamp};
  std::atomic<bool> failed{false};  // a thread failed: the others stop starting I/O
};

// The hot-path state of one bench thread. Engines call MayStart / Prepare / Finish; nothing here
// takes a lock or makes a syscall (NowNs is a vDSO call).
class ThreadCtx {
 public:
  ThreadCtx(RunShared& shared, int id, uint64_t budget);
  ThreadCtx(const ThreadCtx&) = delete;
  ThreadCtx& operator=(const ThreadCtx&) = delete;

  int id() const { return id_; }
  int depth() const { return depth_; }
  IoOp& op(int slot) { return ops_[static_cast<size_t>(slot)]; }
  const Options& options() const { return *shared_.options; }
  RunShared& shared() { return shared_; }

  // True while this thread should start another I/O.
  bool MayStart() const {
    if (shared_.phase.load(std::memory_order_relaxed) == kStop) return false;
    return budget_ == 0 || started_ < budget_;
  }
  // Fills op(slot) with the next I/O of the workload (file, offset, direction).
  void Prepare(int slot);
  // Records the completion of op(slot) with `result` (bytes or -errno) seen at now_ns.
  void Finish(int slot, int64_t result, int64_t now_ns) {
    const IoOp& op = ops_[static_cast<size_t>(slot)];
    if (result != static_cast<int64_t>(op.len)) NoteOdd(op, result);
    if (shared_.phase.load(std::memory_order_relaxed) != kMeasure) return;
    hist_.Add(now_ns - op.submit_ns);
    ++ops_done_;
    if (op.write) ++writes_;
    if (result > 0) bytes_ += static_cast<uint64_t>(result);
    progress_.store(ops_done_, std::memory_order_relaxed);
  }
  // The engine failed: records why and tells the other threads to stop.
  void Fail(absl::Status status);

  // Results.
  const Histogram& histogram() const { return hist_; }
  uint64_t ops_done() const { return ops_done_; }
  uint64_t bytes() const { return bytes_; }
  uint64_t writes() const { return writes_; }
  uint64_t errors() const { return errors_; }
  uint64_t short_ios() const { return short_; }
  const std::string& first_error() const { return first_error_; }
  const absl::Status& status() const { return status_; }
  uint64_t progress() const { return progress_.load(std::memory_order_relaxed); }

 private:
  uint64_t NextRandom() {  // xoshiro256**
    const uint64_t result = Rotl(rng_[1] * 5, 7) * 9;
    const uint64_t t = rng_[1] << 17;
    rng_[2] ^= rng_[0];
    rng_[3] ^= rng_[1];
    rng_[1] ^= rng_[2];
    rng_[0] ^= rng_[3];
    rng_[2] ^= t;
    rng_[3] = Rotl(rng_[3], 45);
    return result;
  }
  static uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  void NoteOdd(const IoOp& op, int64_t result);

  RunShared& shared_;
  const int id_;
  const int depth_;
  const uint64_t budget_;
  uint64_t started_ = 0;
  uint64_t rng_[4];
  uint64_t blocks_per_file_;
  uint64_t cursor_;  // sequential patterns: the next block over all files
  std::vector<IoOp> ops_;
  std::unique_ptr<char, void (*)(void*)> buffers_;

  Histogram hist_;
  uint64_t ops_done_ = 0, bytes_ = 0, writes_ = 0, errors_ = 0, short_ = 0;
  std::string first_error_;
  absl::Status status_;
  alignas(64) std::atomic<uint64_t> progress_{0};
};

// ---------------------------------------------------------------- engines

// One bench thread's engine handle: created on its thread before the start signal, run, then
// destroyed on the same thread.
class ThreadRunner {
 public:
  virtual ~ThreadRunner() = default;
  // Runs the I/O loop until ctx.MayStart() is false and nothing is in flight. A failure is
  // returned (the caller records it); nothing may be left in flight when it returns, unless the
  // engine is hung (then it must not return at all, and the bench reports the hang).
  virtual absl::Status Run(ThreadCtx& ctx) = 0;
};

class Engine {
 public:
  virtual ~Engine() = default;
  virtual std::string name() const = 0;
  // A line saying how this engine is configured (queue depth, pool size...).
  virtual std::string Describe() const { return ""; }
  // Before the threads start (main thread), with the run's files open.
  virtual absl::Status Setup(RunShared& /*shared*/) { return absl::OkStatus(); }
  // On each bench thread.
  virtual absl::StatusOr<std::unique_ptr<ThreadRunner>> NewThread(ThreadCtx& ctx) = 0;
  // Main thread, at the start and end of the measured window.
  virtual void OnMeasureStart() {}
  virtual void OnMeasureEnd() {}
  // After the threads finished.
  virtual void Teardown() {}
  // Engine-specific counters for the measured window, as (name, value) pairs.
  virtual std::vector<std::pair<std::string, double>> Counters() const { return {}; }
  // What the engine knows when a thread seems hung (kaio: its service statistics).
  virtual std::string HangReport() const { return ""; }
};

// inline_io: RequesterOptions::inline_io for every bench thread's requester (engine `kaio` by
// default); without it every request goes through the service's threads (engine `kaio-threads`).
std::unique_ptr<Engine> MakeKaioEngine(const Options& options, bool inline_io, std::string name);
std::unique_ptr<Engine> MakeLibaioEngine(const Options& options);
std::unique_ptr<Engine> MakePosixAioEngine(const Options& options);
std::unique_ptr<Engine> MakeThreadPoolEngine(const Options& options);
std::unique_ptr<Engine> MakeIoUringEngine(const Options& options);

// "a stall": the error an engine returns when no completion arrived for stall_timeout_s.
absl::Status StallError(const std::string& engine, int thread, int in_flight, double seconds);
// Prints `status` on stderr and fails the run (ctx.Fail); the caller keeps waiting for its I/O.
void ReportStall(ThreadCtx& ctx, absl::Status status);

}  // namespace kaio_bench

#endif  // KAIO_TOOLS_BENCH_H_
