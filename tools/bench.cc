#include "tools/bench.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "tools/cli.h"
#include "tools/size_flag.h"

namespace kaio_bench {

// ---------------------------------------------------------------- flag types

absl::StatusOr<double> ParseSeconds(absl::string_view text) {
  std::string t = absl::AsciiStrToLower(text);
  double scale = 1;
  if (absl::EndsWith(t, "ms")) {
    scale = 1e-3;
    t.resize(t.size() - 2);
  } else if (absl::EndsWith(t, "us")) {
    scale = 1e-6;
    t.resize(t.size() - 2);
  } else if (absl::EndsWith(t, "s")) {
    t.pop_back();
  } else if (absl::EndsWith(t, "m")) {
    scale = 60;
    t.pop_back();
  }
  double value = 0;
  if (t.empty() || !absl::SimpleAtod(t, &value) || value < 0) {
    return absl::InvalidArgumentError(absl::StrCat("not a duration: '", text, "' (examples: 5, 5s, 500ms, 1m)"));
  }
  return value * scale;
}

bool AbslParseFlag(absl::string_view text, Seconds* out, std::string* error) {
  absl::StatusOr<double> v = ParseSeconds(text);
  if (!v.ok()) {
    *error = std::string(v.status().message());
    return false;
  }
  out->seconds = *v;
  return true;
}

std::string AbslUnparseFlag(Seconds s) { return absl::StrFormat("%gs", s.seconds); }

bool AbslParseFlag(absl::string_view text, Count* out, std::string* error) {
  std::string t = absl::AsciiStrToLower(text);
  uint64_t multiplier = 1;
  if (!t.empty() && t.back() == 'k') multiplier = 1000;
  if (!t.empty() && t.back() == 'm') multiplier = 1000000;
  if (multiplier != 1) t.pop_back();
  uint64_t value = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &value) || value > ~uint64_t{0} / multiplier) {
    *error = absl::StrCat("not a count: '", text, "' (examples: 100000, 100k, 1m)");
    return false;
  }
  out->value = value * multiplier;
  return true;
}

std::string AbslUnparseFlag(Count c) { return absl::StrCat(c.value); }

}  // namespace kaio_bench

// ---------------------------------------------------------------- flags

using kaio_bench::Count;
using kaio_bench::Seconds;
using kaio_tools::Size;

// Workload
ABSL_FLAG(std::string, rw, "randread", "I/O pattern: randread, randwrite, read, write, randrw, readwrite (or rw)");
ABSL_FLAG(std::string, readwrite, "", "the same as --rw (fio's name)");
ABSL_FLAG(Size, bs, Size(4096), "block size, at most 64m; offsets are multiples of it");
ABSL_FLAG(int, iodepth, 32, "I/Os in flight per thread (1 to 65536)");
ABSL_FLAG(int, threads, 1, "bench threads (1 to 1024), each with its own engine handle; alias --numjobs");
ABSL_FLAG(int, numjobs, 1, "the same as --threads (fio's name)");
ABSL_FLAG(Size, size, Size(uint64_t{256} << 20), "size of each file");
ABSL_FLAG(int, nrfiles, 1, "number of files (1 to 4096); I/O spreads uniformly over them");
ABSL_FLAG(bool, direct, true, "O_DIRECT; --buffered is --direct=0");
ABSL_FLAG(bool, buffered, false, "through the page cache: the same as --direct=0");
ABSL_FLAG(std::string, cache, "warm",
          "buffered runs: before each engine, write back the files' dirty pages and read the files into the "
          "page cache (warm: page-cache hits, the CPU-bound case; writes start on clean cached pages) or drop "
          "them (cold)");
ABSL_FLAG(int, rwmixread, 50, "mixed patterns: percentage of reads (0 to 100)");
ABSL_FLAG(Seconds, runtime, Seconds{4}, "measured time per engine (5, 5s, 500ms, 1m)");
ABSL_FLAG(Seconds, ramp, Seconds{0.5}, "unmeasured warm-up per engine; alias --ramp_time");
ABSL_FLAG(Seconds, ramp_time, Seconds{0.5}, "the same as --ramp (fio's name)");
ABSL_FLAG(Count, ops, Count{0},
          "instead of a time: N I/Os per engine (split over the threads), all measured (100000, 100k, 1m)");
ABSL_FLAG(int, rounds, 1,
          "run the engine list N times, interleaved (kaio, libaio, ..., kaio, libaio, ...), and merge each "
          "engine's rounds: slow drift in the machine's load then hits every engine alike; the per-round "
          "figures are printed too (1 to 1000)");
ABSL_FLAG(Count, seed, Count{1}, "offset sequence seed; every engine replays the same sequence");
// Files
ABSL_FLAG(std::string, filename, "", "P[:P..]: use these files (created or extended to --size if needed, and kept)");
ABSL_FLAG(std::string, directory, "",
          "where temporary files go (default: $TMPDIR if set, else the current directory, which under `bazel "
          "run` is the directory you ran it from)");
// Engines
ABSL_FLAG(std::string, engines, "all",
          "comma list of: kaio, kaio-threads, libaio, posixaio, threadpool, io_uring, all (kaio-threads is kaio "
          "without RequesterOptions::inline_io), and optionally fio (= fio-libaio) or fio-ENGINE (fio-io_uring, "
          "fio-posixaio, fio-psync...): runs Debian's fio on the same files with the same settings; alias --engine");
ABSL_FLAG(std::string, engine, "", "the same as --engines");
ABSL_FLAG(int, kaio_queue_depth, 0, "ServiceOptions::queue_depth (0: max(128, threads*iodepth))");
ABSL_FLAG(int, kaio_submit_batch, 64, "ServiceOptions::submit_batch");
ABSL_FLAG(int, kaio_device_chunk, 4, "ServiceOptions::device_submit_chunk");
ABSL_FLAG(int, kaio_reap_batch, 64, "ServiceOptions::reap_batch");
ABSL_FLAG(int, kaio_fallback_threads, 4, "ServiceOptions::fallback_threads");
ABSL_FLAG(int, kaio_submitter_cpu, -1, "pin kaio's submitter thread to this CPU (-1: not pinned)");
ABSL_FLAG(int, kaio_reaper_cpu, -1, "pin kaio's reaper thread to this CPU (-1: not pinned)");
ABSL_FLAG(std::string, kaio_submit, "inline",
          "the kaio engine's requesters submit and reap on their own thread when kaio's threads are idle "
          "(inline: RequesterOptions::inline_io) or hand every request to kaio's submitter and reaper threads "
          "(threads)");
ABSL_FLAG(std::string, kaio_wait, "block",
          "requesters sleep in Requester::Wait (block) or spin on Poll() (spin: thread-per-core style, no "
          "sleeping, one CPU busy per bench thread)");
ABSL_FLAG(int, pool_threads, 0, "threadpool engine workers (0: threads*iodepth, at most 256)");
ABSL_FLAG(std::string, fio, "fio", "the fio binary (default: fio from PATH)");
// Output
ABSL_FLAG(bool, json, false, "JSON on stdout instead of the table (progress and notes go to stderr)");
ABSL_FLAG(std::string, json_file, "", "also write the JSON to PATH (the table still goes to stdout)");
ABSL_FLAG(bool, progress, false, "progress lines on stderr (default: when stderr is a terminal)");
ABSL_FLAG(Seconds, stall_timeout, Seconds{10},
          "an engine thread with I/O in flight and no completion for this long is reported as stalled");

namespace kaio_bench {

namespace {

using kaio_tools::Given;

const char* const kAllEngines[] = {"kaio", "kaio-threads", "libaio", "posixaio", "threadpool", "io_uring"};

constexpr char kUsage[] = R"(drive the same I/O workload through several engines and compare them.

usage: kaio_bench [--option=value ...]
  (under Bazel: bazel run -c opt //tools:kaio_bench -- [options]; scripts/run_bench.sh [options])
  Options may be written with '-' or '_' (--json-file, --json_file).

With no options: 4 KiB O_DIRECT random reads, iodepth 32, 1 thread, on a 256 MiB temporary file,
through every engine (0.5 s ramp + 4 s measured each; about 30 s in all), then a comparison table.

Columns: IOPS and MiB/s over the measured window; latency is submission to completion as the
bench thread sees it; CPU/op is the whole process's getrusage(RUSAGE_SELF) user+system time over
the window divided by the I/Os completed in it (so it includes kaio's submitter, reaper and pool
threads, glibc's AIO threads and the thread pool's workers); csw/op is voluntary+involuntary
context switches per I/O; "x kaio" columns are ratios against the kaio row.)";

// The value of `flag`, or of its alias if only that was given.
template <typename T>
absl::StatusOr<T> FlagOrAlias(const absl::Flag<T>& flag, const absl::Flag<T>& alias) {
  if (Given(flag) && Given(alias)) {
    return absl::InvalidArgumentError(absl::StrCat("--", absl::GetFlagReflectionHandle(flag).Name(), " and --",
                                                   absl::GetFlagReflectionHandle(alias).Name(),
                                                   " are the same option: give one"));
  }
  return absl::GetFlag(Given(alias) ? alias : flag);
}

// The value of `flag`, which must be in [low, high] if given (a default may mean "decide for me").
absl::Status IntFlag(const absl::Flag<int>& flag, int low, int high, int* out) {
  *out = absl::GetFlag(flag);
  return Given(flag) ? kaio_tools::InRange(flag, low, high) : absl::OkStatus();
}

absl::Status ParseEngines(const std::string& value, std::vector<std::string>* engines) {
  engines->clear();
  for (absl::string_view e : absl::StrSplit(value, ',', absl::SkipEmpty())) {
    std::string engine = absl::AsciiStrToLower(e);
    if (engine == "uring" || engine == "io-uring" || engine == "iouring") engine = "io_uring";
    if (engine == "posix" || engine == "posix-aio") engine = "posixaio";
    if (engine == "pool" || engine == "thread-pool") engine = "threadpool";
    if (engine == "fio") engine = "fio-libaio";
    if (engine == "all") {
      engines->insert(engines->end(), std::begin(kAllEngines), std::end(kAllEngines));
      continue;
    }
    bool known = absl::StartsWith(engine, "fio-") && engine.size() > 4;
    for (const char* k : kAllEngines) known = known || engine == k;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--engines: unknown engine '", engine, "' (kaio, kaio-threads, libaio, posixaio, threadpool, io_uring, all, fio, fio-ENGINE)"));
    }
    engines->push_back(engine);
  }
  // Keep the first occurrence of each.
  std::vector<std::string> unique;
  for (const std::string& e : *engines) {
    if (std::find(unique.begin(), unique.end(), e) == unique.end()) unique.push_back(e);
  }
  *engines = unique;
  if (engines->empty()) return absl::InvalidArgumentError("--engines: no engine named");
  return absl::OkStatus();
}

absl::Status FromFlags(Options& o) {
  absl::StatusOr<std::string> rw = FlagOrAlias(FLAGS_rw, FLAGS_readwrite);
  if (!rw.ok()) return rw.status();
  std::string v = absl::AsciiStrToLower(*rw);
  if (v == "randread") o.pattern = Pattern::kRandRead;
  else if (v == "randwrite") o.pattern = Pattern::kRandWrite;
  else if (v == "read") o.pattern = Pattern::kRead;
  else if (v == "write") o.pattern = Pattern::kWrite;
  else if (v == "randrw") o.pattern = Pattern::kRandRW;
  else if (v == "readwrite" || v == "rw") { o.pattern = Pattern::kReadWrite; v = "readwrite"; }
  else return absl::InvalidArgumentError(absl::StrCat("--rw=", *rw, ": expected randread, randwrite, read, write, randrw or readwrite"));
  o.rw = v;

  uint64_t bs = absl::GetFlag(FLAGS_bs).bytes;
  if (bs == 0 || bs > (uint64_t{64} << 20)) return absl::InvalidArgumentError("--bs must be in (0, 64m]");
  o.bs = static_cast<uint32_t>(bs);
  o.size = absl::GetFlag(FLAGS_size).bytes;
  if (absl::StatusOr<int> threads = FlagOrAlias(FLAGS_threads, FLAGS_numjobs); !threads.ok()) return threads.status();
  for (absl::Status s : {IntFlag(FLAGS_iodepth, 1, 65536, &o.iodepth),
                         IntFlag(Given(FLAGS_numjobs) ? FLAGS_numjobs : FLAGS_threads, 1, 1024, &o.threads),
                         IntFlag(FLAGS_nrfiles, 1, 4096, &o.nrfiles),
                         IntFlag(FLAGS_rwmixread, 0, 100, &o.rwmixread),
                         IntFlag(FLAGS_rounds, 1, 1000, &o.rounds),
                         IntFlag(FLAGS_kaio_queue_depth, 1, 1 << 20, &o.kaio_queue_depth),
                         IntFlag(FLAGS_kaio_device_chunk, 1, 1 << 16, &o.kaio_device_chunk),
                         IntFlag(FLAGS_kaio_submit_batch, 1, 1 << 16, &o.kaio_submit_batch),
                         IntFlag(FLAGS_kaio_reap_batch, 1, 1 << 16, &o.kaio_reap_batch),
                         IntFlag(FLAGS_kaio_fallback_threads, 0, 1024, &o.kaio_fallback_threads),
                         IntFlag(FLAGS_kaio_submitter_cpu, -1, 4095, &o.kaio_submitter_cpu),
                         IntFlag(FLAGS_kaio_reaper_cpu, -1, 4095, &o.kaio_reaper_cpu),
                         IntFlag(FLAGS_pool_threads, 1, 4096, &o.pool_threads)}) {
    if (!s.ok()) return s;
  }

  // --buffered is --direct=0: both given must agree.
  o.direct = absl::GetFlag(FLAGS_direct);
  if (Given(FLAGS_buffered)) {
    if (Given(FLAGS_direct) && o.direct == absl::GetFlag(FLAGS_buffered)) {
      return absl::InvalidArgumentError("--direct and --buffered contradict each other: give one");
    }
    o.direct = !absl::GetFlag(FLAGS_buffered);
  }
  const std::string cache = absl::GetFlag(FLAGS_cache);
  if (cache == "warm") o.cache_warm = true;
  else if (cache == "cold") o.cache_warm = false;
  else return absl::InvalidArgumentError("--cache: expected warm or cold");

  o.runtime_s = absl::GetFlag(FLAGS_runtime).seconds;
  absl::StatusOr<Seconds> ramp = FlagOrAlias(FLAGS_ramp, FLAGS_ramp_time);
  if (!ramp.ok()) return ramp.status();
  o.ramp_s = ramp->seconds;
  o.ops = absl::GetFlag(FLAGS_ops).value;
  o.seed = absl::GetFlag(FLAGS_seed).value;
  o.filenames = absl::StrSplit(absl::GetFlag(FLAGS_filename), ':', absl::SkipEmpty());
  o.directory = absl::GetFlag(FLAGS_directory);
  absl::StatusOr<std::string> engines = FlagOrAlias(FLAGS_engines, FLAGS_engine);
  if (!engines.ok()) return engines.status();
  if (absl::Status s = ParseEngines(*engines, &o.engines); !s.ok()) return s;
  o.json = absl::GetFlag(FLAGS_json);
  o.json_file = absl::GetFlag(FLAGS_json_file);
  if (Given(FLAGS_progress)) o.progress = absl::GetFlag(FLAGS_progress) ? 1 : 0;
  o.stall_timeout_s = absl::GetFlag(FLAGS_stall_timeout).seconds;
  if (o.stall_timeout_s <= 0) return absl::InvalidArgumentError("--stall-timeout must be positive");

  const std::string submit = absl::GetFlag(FLAGS_kaio_submit);
  if (submit == "inline") o.kaio_inline = true;
  else if (submit == "threads") o.kaio_inline = false;
  else return absl::InvalidArgumentError("--kaio-submit: expected inline or threads");
  const std::string wait = absl::GetFlag(FLAGS_kaio_wait);
  if (wait == "block") o.kaio_spin = false;
  else if (wait == "spin") o.kaio_spin = true;
  else return absl::InvalidArgumentError("--kaio-wait: expected block or spin");
  o.fio = absl::GetFlag(FLAGS_fio);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  // "kaio_bench help" has always been --help.
  std::vector<char*> args(argv, argv + argc);
  for (char*& a : args) {
    if (std::strcmp(a, "help") == 0) a = const_cast<char*>("--help");
  }
  args.push_back(nullptr);
  std::vector<std::string> positional = kaio_tools::ParseCommandLine(argc, args.data(), kUsage);
  if (!positional.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unexpected argument '", positional[0], "' (options are --name=value; see --help)"));
  }
  Options o;
  if (absl::Status s = FromFlags(o); !s.ok()) return s;
  if (o.size < o.bs) {
    return absl::InvalidArgumentError(absl::StrCat("--size (", o.size, ") is smaller than --bs (", o.bs, ")"));
  }
  if (o.direct && o.bs % 512 != 0) {
    return absl::InvalidArgumentError("O_DIRECT needs --bs to be a multiple of 512 (or use --direct=0)");
  }
  if (!o.filenames.empty() && static_cast<int>(o.filenames.size()) != o.nrfiles) {
    if (o.nrfiles != 1) {
      return absl::InvalidArgumentError(absl::StrCat("--filename names ", o.filenames.size(), " files but --nrfiles is ", o.nrfiles));
    }
    o.nrfiles = static_cast<int>(o.filenames.size());
  }
  if (o.ops == 0 && o.runtime_s <= 0) return absl::InvalidArgumentError("--runtime must be positive (or give --ops)");
  if (o.ops != 0) o.ramp_s = 0;
  if (o.ops != 0 && o.ops < static_cast<uint64_t>(o.threads)) {
    return absl::InvalidArgumentError("--ops must be at least --threads");
  }
  return o;
}

// ---------------------------------------------------------------- histogram

void Histogram::Merge(const Histogram& other) {
  for (int i = 0; i < kBuckets; ++i) counts_[static_cast<size_t>(i)] += other.counts_[static_cast<size_t>(i)];
  count_ += other.count_;
  sum_ += other.sum_;
  max_ = std::max(max_, other.max_);
}

void Histogram::BucketRange(int index, double* low, double* high) {
  if (index < kSub) {
    *low = index;
    *high = index + 1;
    return;
  }
  int exponent = index / kSub + kSubBits - 1;
  int sub = index % kSub;
  double unit = std::ldexp(1.0, exponent - kSubBits);
  *low = (kSub + sub) * unit;
  *high = *low + unit;
}

double Histogram::Quantile(double q) const {
  if (count_ == 0) return 0;
  uint64_t rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<uint64_t>(rank, 1, count_);
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += counts_[static_cast<size_t>(i)];
    if (seen >= rank) {
      double low, high;
      BucketRange(i, &low, &high);
      return std::min((low + high) / 2, static_cast<double>(max_));
    }
  }
  return static_cast<double>(max_);
}

// ---------------------------------------------------------------- thread context

namespace {
uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
}  // namespace

ThreadCtx::ThreadCtx(RunShared& shared, int id, uint64_t budget)
    : shared_(shared),
      id_(id),
      depth_(shared.options->iodepth),
      budget_(budget),
      ops_(static_cast<size_t>(shared.options->iodepth)),
      buffers_(nullptr, &std::free) {
  const Options& o = *shared.options;
  uint64_t s = o.seed * 1000003 + static_cast<uint64_t>(id);
  for (uint64_t& r : rng_) r = SplitMix(s);
  blocks_per_file_ = o.size / o.bs;
  uint64_t total_blocks = blocks_per_file_ * static_cast<uint64_t>(o.nrfiles);
  cursor_ = total_blocks / static_cast<uint64_t>(o.threads) * static_cast<uint64_t>(id);
  size_t stride = (static_cast<size_t>(o.bs) + 4095) & ~size_t{4095};
  size_t bytes = stride * static_cast<size_t>(depth_);
  buffers_.reset(static_cast<char*>(std::aligned_alloc(4096, bytes)));
  if (buffers_ == nullptr) {
    std::fprintf(stderr, "kaio_bench: cannot allocate %zu bytes of I/O buffers\n", bytes);
    std::exit(1);
  }
  // Touch every page now (no page faults in the measured window), with data that is not zeros.
  for (size_t i = 0; i < bytes; ++i) buffers_.get()[i] = static_cast<char>(i * 131 + static_cast<size_t>(id) + 1);
  for (int i = 0; i < depth_; ++i) ops_[static_cast<size_t>(i)].buf = buffers_.get() + stride * static_cast<size_t>(i);
}

void ThreadCtx::Prepare(int slot) {
  const Options& o = *shared_.options;
  IoOp& op = ops_[static_cast<size_t>(slot)];
  uint64_t file = 0, block = 0;
  if (o.is_random()) {
    uint64_t r = NextRandom();
    block = static_cast<uint64_t>((static_cast<unsigned __int128>(r) * blocks_per_file_) >> 64);
    if (o.nrfiles > 1) {
      file = static_cast<uint64_t>((static_cast<unsigned __int128>(NextRandom()) * static_cast<uint64_t>(o.nrfiles)) >> 64);
    }
  } else {
    file = cursor_ / blocks_per_file_;
    block = cursor_ % blocks_per_file_;
    if (++cursor_ == blocks_per_file_ * static_cast<uint64_t>(o.nrfiles)) cursor_ = 0;
  }
  bool write;
  switch (o.pattern) {
    case Pattern::kRead:
    case Pattern::kRandRead: write = false; break;
    case Pattern::kWrite:
    case Pattern::kRandWrite: write = true; break;
    default: write = NextRandom() % 100 >= static_cast<uint64_t>(o.rwmixread); break;
  }
  op.fd = shared_.fds[file];
  op.write = write;
  op.len = o.bs;
  op.offset = static_cast<int64_t>(block * o.bs);
  ++started_;
}

void ThreadCtx::NoteOdd(const IoOp& op, int64_t result) {
  if (result < 0) {
    if (errors_++ == 0) {
      first_error_ = absl::StrCat(op.write ? "write" : "read", " of ", op.len, " bytes at offset ", op.offset,
                                  ": ", std::strerror(static_cast<int>(-result)), " (errno ", -result, ")");
    }
  } else {
    ++short_;
  }
}

void ThreadCtx::Fail(absl::Status status) {
  if (status_.ok()) status_ = std::move(status);
  shared_.failed.store(true, std::memory_order_relaxed);
  shared_.phase.store(kStop, std::memory_order_relaxed);
}

absl::Status StallError(const std::string& engine, int thread, int in_flight, double seconds) {
  return absl::DeadlineExceededError(absl::StrCat(engine, ": thread ", thread, " has ", in_flight,
                                                  " I/Os in flight and saw no completion for ", seconds, " s"));
}

void ReportStall(ThreadCtx& ctx, absl::Status status) {
  std::fprintf(stderr, "\nkaio_bench: %s\n", status.ToString().c_str());
  ctx.Fail(std::move(status));
}

}  // namespace kaio_bench
