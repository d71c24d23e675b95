#include "tools/bench.h"

#include <errno.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace kaio_bench {

// ---------------------------------------------------------------- parsing

absl::StatusOr<uint64_t> ParseSize(const std::string& text) {
  std::string t = absl::AsciiStrToLower(text);
  uint64_t multiplier = 1;
  if (!t.empty() && (t.back() == 'b')) t.pop_back();  // "4kb", "1gib" tolerated
  if (t.size() >= 2 && t.back() == 'i') t.pop_back();
  if (!t.empty()) {
    switch (t.back()) {
      case 'k': multiplier = uint64_t{1} << 10; break;
      case 'm': multiplier = uint64_t{1} << 20; break;
      case 'g': multiplier = uint64_t{1} << 30; break;
      case 't': multiplier = uint64_t{1} << 40; break;
      default: break;
    }
    if (multiplier != 1) t.pop_back();
  }
  uint64_t value = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("not a size: '", text, "' (examples: 4096, 4k, 256m, 1g)"));
  }
  return value * multiplier;
}

absl::StatusOr<double> ParseSeconds(const std::string& text) {
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

namespace {

absl::StatusOr<uint64_t> ParseCount(const std::string& text) {
  std::string t = absl::AsciiStrToLower(text);
  uint64_t multiplier = 1;
  if (!t.empty() && t.back() == 'k') multiplier = 1000;
  if (!t.empty() && t.back() == 'm') multiplier = 1000000;
  if (multiplier != 1) t.pop_back();
  uint64_t value = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &value)) {
    return absl::InvalidArgumentError(absl::StrCat("not a count: '", text, "' (examples: 100000, 100k, 1m)"));
  }
  return value * multiplier;
}

absl::StatusOr<int> ParseInt(const std::string& name, const std::string& text, int low, int high) {
  int value = 0;
  if (!absl::SimpleAtoi(text, &value) || value < low || value > high) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", name, "=", text, ": expected an integer in [", low, ", ", high, "]"));
  }
  return value;
}

absl::StatusOr<bool> ParseBool(const std::string& name, const std::string& text) {
  std::string t = absl::AsciiStrToLower(text);
  if (t == "1" || t == "true" || t == "yes" || t == "on") return true;
  if (t == "0" || t == "false" || t == "no" || t == "off") return false;
  return absl::InvalidArgumentError(absl::StrCat("--", name, "=", text, ": expected 0 or 1"));
}

const char* const kAllEngines[] = {"kaio", "kaio-threads", "libaio", "posixaio", "threadpool", "io_uring"};

}  // namespace

std::string Usage() {
  return R"(kaio_bench: drive the same I/O workload through several engines and compare them.

usage: kaio_bench [--option=value ...]
  (under Bazel: bazel run -c opt //tools:kaio_bench -- [options]; scripts/run_bench.sh [options])

With no options: 4 KiB O_DIRECT random reads, iodepth 32, 1 thread, on a 256 MiB temporary file,
through every engine (0.5 s ramp + 4 s measured each; about 30 s in all), then a comparison table.

Workload
  --rw=PATTERN        randread (default), randwrite, read, write, randrw, readwrite (or rw)
  --bs=SIZE           block size (default 4k); offsets are multiples of it
  --iodepth=N         I/Os in flight per thread (default 32)
  --threads=N         bench threads (default 1; alias --numjobs); each has its own engine handle
  --size=SIZE         size of each file (default 256m)
  --nrfiles=N         number of files (default 1); I/O spreads uniformly over them
  --direct=0|1        O_DIRECT (default 1); --buffered is --direct=0
  --cache=warm|cold   buffered runs: read the files into the page cache before each engine (warm,
                      default: page-cache hits, the CPU-bound case) or drop them (cold)
  --rwmixread=PCT     mixed patterns: percentage of reads (default 50)
  --runtime=DUR       measured time per engine (default 4s)
  --ramp=DUR          unmeasured warm-up per engine (default 0.5s)
  --ops=N             instead of a time: N I/Os per engine (split over the threads), all measured
  --rounds=N          run the engine list N times, interleaved (kaio, libaio, ..., kaio, libaio,
                      ...), and merge each engine's rounds: slow drift in the machine's load then
                      hits every engine alike (default 1); the per-round figures are printed too
  --seed=N            offset sequence seed (default 1); every engine replays the same sequence
Files
  --filename=P[:P..]  use these files (created or extended to --size if needed, and kept)
  --directory=DIR     where temporary files go (default: $TMPDIR if set, else the current
                      directory, which under `bazel run` is the directory you ran it from)
Engines
  --engines=LIST      comma list of: kaio, kaio-threads, libaio, posixaio, threadpool, io_uring, all
                      (default all; kaio-threads is kaio without RequesterOptions::inline_io),
                      and optionally fio (= fio-libaio) or fio-ENGINE (fio-io_uring, fio-posixaio,
                      fio-psync...): runs Debian's fio on the same files with the same settings
  --kaio-queue-depth=N     ServiceOptions::queue_depth (default max(128, threads*iodepth))
  --kaio-submit-batch=N    ServiceOptions::submit_batch (default 64)
  --kaio-device-chunk=N    ServiceOptions::device_submit_chunk (default 4)
  --kaio-reap-batch=N      ServiceOptions::reap_batch (default 64)
  --kaio-fallback-threads=N  ServiceOptions::fallback_threads (default 4)
  --kaio-submitter-cpu=N, --kaio-reaper-cpu=N   pin kaio's threads (default: not pinned)
  --kaio-submit=inline|threads  the kaio engine's requesters submit and reap on their own thread
                      when kaio's threads are idle (inline: RequesterOptions::inline_io, default)
                      or hand every request to kaio's submitter and reaper threads (threads)
  --kaio-wait=block|spin  requesters sleep in Requester::Wait (block, default) or spin on Poll()
                      (thread-per-core style: no sleeping, one CPU busy per bench thread)
  --pool-threads=N    threadpool engine workers (default threads*iodepth, at most 256)
  --fio=PATH          the fio binary (default: fio from PATH)
Output
  --json              JSON on stdout instead of the table (progress and notes go to stderr)
  --json-file=PATH    also write the JSON to PATH (the table still goes to stdout)
  --progress=0|1      progress line on stderr (default: when stderr is a terminal)
  --stall-timeout=DUR an engine with I/O in flight and no completion for this long is reported
                      as stalled (default 10s)

Columns: IOPS and MiB/s over the measured window; latency is submission to completion as the
bench thread sees it; CPU/op is the whole process's getrusage(RUSAGE_SELF) user+system time over
the window divided by the I/Os completed in it (so it includes kaio's submitter, reaper and pool
threads, glibc's AIO threads and the thread pool's workers); csw/op is voluntary+involuntary
context switches per I/O; "x kaio" columns are ratios against the kaio row.
)";
}

absl::StatusOr<Options> ParseOptions(int argc, char** argv) {
  Options o;
  o.engines.assign(std::begin(kAllEngines), std::end(kAllEngines));
  bool engines_given = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help" || arg == "help") {
      std::fputs(Usage().c_str(), stdout);
      std::exit(0);
    }
    if (!absl::StartsWith(arg, "--")) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "' (options are --name=value; see --help)"));
    }
    arg = arg.substr(2);
    std::string name = arg, value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != std::string::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
      has_value = true;
    }
    std::replace(name.begin(), name.end(), '_', '-');
    // Flags that may stand alone.
    if (!has_value && (name == "json" || name == "buffered" || name == "direct" || name == "progress")) {
      value = "1";
      has_value = true;
    }
    if (!has_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
      value = argv[++i];
    }
    if (name == "rw" || name == "readwrite") {
      std::string v = absl::AsciiStrToLower(value);
      if (v == "randread") o.pattern = Pattern::kRandRead;
      else if (v == "randwrite") o.pattern = Pattern::kRandWrite;
      else if (v == "read") o.pattern = Pattern::kRead;
      else if (v == "write") o.pattern = Pattern::kWrite;
      else if (v == "randrw") o.pattern = Pattern::kRandRW;
      else if (v == "readwrite" || v == "rw") { o.pattern = Pattern::kReadWrite; v = "readwrite"; }
      else return absl::InvalidArgumentError(absl::StrCat("--rw=", value, ": expected randread, randwrite, read, write, randrw or readwrite"));
      o.rw = v;
    } else if (name == "bs") {
      absl::StatusOr<uint64_t> v = ParseSize(value);
      if (!v.ok()) return v.status();
      if (*v == 0 || *v > (uint64_t{64} << 20)) return absl::InvalidArgumentError("--bs must be in (0, 64m]");
      o.bs = static_cast<uint32_t>(*v);
    } else if (name == "iodepth") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 65536);
      if (!v.ok()) return v.status();
      o.iodepth = *v;
    } else if (name == "threads" || name == "numjobs") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1024);
      if (!v.ok()) return v.status();
      o.threads = *v;
    } else if (name == "size") {
      absl::StatusOr<uint64_t> v = ParseSize(value);
      if (!v.ok()) return v.status();
      o.size = *v;
    } else if (name == "nrfiles") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 4096);
      if (!v.ok()) return v.status();
      o.nrfiles = *v;
    } else if (name == "direct") {
      absl::StatusOr<bool> v = ParseBool(name, value);
      if (!v.ok()) return v.status();
      o.direct = *v;
    } else if (name == "buffered") {
      absl::StatusOr<bool> v = ParseBool(name, value);
      if (!v.ok()) return v.status();
      o.direct = !*v;
    } else if (name == "cache") {
      if (value == "warm") o.cache_warm = true;
      else if (value == "cold") o.cache_warm = false;
      else return absl::InvalidArgumentError("--cache: expected warm or cold");
    } else if (name == "rwmixread") {
      absl::StatusOr<int> v = ParseInt(name, value, 0, 100);
      if (!v.ok()) return v.status();
      o.rwmixread = *v;
    } else if (name == "runtime") {
      absl::StatusOr<double> v = ParseSeconds(value);
      if (!v.ok()) return v.status();
      o.runtime_s = *v;
    } else if (name == "ramp" || name == "ramp-time") {
      absl::StatusOr<double> v = ParseSeconds(value);
      if (!v.ok()) return v.status();
      o.ramp_s = *v;
    } else if (name == "ops") {
      absl::StatusOr<uint64_t> v = ParseCount(value);
      if (!v.ok()) return v.status();
      o.ops = *v;
    } else if (name == "rounds") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1000);
      if (!v.ok()) return v.status();
      o.rounds = *v;
    } else if (name == "filename") {
      o.filenames = absl::StrSplit(value, ':', absl::SkipEmpty());
    } else if (name == "directory") {
      o.directory = value;
    } else if (name == "seed") {
      absl::StatusOr<uint64_t> v = ParseCount(value);
      if (!v.ok()) return v.status();
      o.seed = *v;
    } else if (name == "engines" || name == "engine") {
      engines_given = true;
      o.engines.clear();
      for (absl::string_view e : absl::StrSplit(value, ',', absl::SkipEmpty())) {
        std::string engine = absl::AsciiStrToLower(e);
        if (engine == "uring" || engine == "io-uring" || engine == "iouring") engine = "io_uring";
        if (engine == "posix" || engine == "posix-aio") engine = "posixaio";
        if (engine == "pool" || engine == "thread-pool") engine = "threadpool";
        if (engine == "fio") engine = "fio-libaio";
        if (engine == "all") {
          o.engines.insert(o.engines.end(), std::begin(kAllEngines), std::end(kAllEngines));
          continue;
        }
        bool known = absl::StartsWith(engine, "fio-") && engine.size() > 4;
        for (const char* k : kAllEngines) known = known || engine == k;
        if (!known) {
          return absl::InvalidArgumentError(absl::StrCat(
              "--engines: unknown engine '", engine, "' (kaio, kaio-threads, libaio, posixaio, threadpool, io_uring, all, fio, fio-ENGINE)"));
        }
        o.engines.push_back(engine);
      }
      // Keep the first occurrence of each.
      std::vector<std::string> unique;
      for (const std::string& e : o.engines) {
        if (std::find(unique.begin(), unique.end(), e) == unique.end()) unique.push_back(e);
      }
      o.engines = unique;
      if (o.engines.empty()) return absl::InvalidArgumentError("--engines: no engine named");
    } else if (name == "json") {
      absl::StatusOr<bool> v = ParseBool(name, value);
      if (!v.ok()) return v.status();
      o.json = *v;
    } else if (name == "json-file") {
      o.json_file = value;
    } else if (name == "progress") {
      absl::StatusOr<bool> v = ParseBool(name, value);
      if (!v.ok()) return v.status();
      o.progress = *v ? 1 : 0;
    } else if (name == "stall-timeout") {
      absl::StatusOr<double> v = ParseSeconds(value);
      if (!v.ok()) return v.status();
      if (*v <= 0) return absl::InvalidArgumentError("--stall-timeout must be positive");
      o.stall_timeout_s = *v;
    } else if (name == "kaio-queue-depth") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1 << 20);
      if (!v.ok()) return v.status();
      o.kaio_queue_depth = *v;
    } else if (name == "kaio-device-chunk") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1 << 16);
      if (!v.ok()) return v.status();
      o.kaio_device_chunk = *v;
    } else if (name == "kaio-submit-batch") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1 << 16);
      if (!v.ok()) return v.status();
      o.kaio_submit_batch = *v;
    } else if (name == "kaio-reap-batch") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 1 << 16);
      if (!v.ok()) return v.status();
      o.kaio_reap_batch = *v;
    } else if (name == "kaio-fallback-threads") {
      absl::StatusOr<int> v = ParseInt(name, value, 0, 1024);
      if (!v.ok()) return v.status();
      o.kaio_fallback_threads = *v;
    } else if (name == "kaio-submitter-cpu") {
      absl::StatusOr<int> v = ParseInt(name, value, -1, 4095);
      if (!v.ok()) return v.status();
      o.kaio_submitter_cpu = *v;
    } else if (name == "kaio-reaper-cpu") {
      absl::StatusOr<int> v = ParseInt(name, value, -1, 4095);
      if (!v.ok()) return v.status();
      o.kaio_reaper_cpu = *v;
    } else if (name == "kaio-submit") {
      if (value == "inline") o.kaio_inline = true;
      else if (value == "threads") o.kaio_inline = false;
      else return absl::InvalidArgumentError("--kaio-submit: expected inline or threads");
    } else if (name == "kaio-wait") {
      if (value == "block") o.kaio_spin = false;
      else if (value == "spin") o.kaio_spin = true;
      else return absl::InvalidArgumentError("--kaio-wait: expected block or spin");
    } else if (name == "pool-threads") {
      absl::StatusOr<int> v = ParseInt(name, value, 1, 4096);
      if (!v.ok()) return v.status();
      o.pool_threads = *v;
    } else if (name == "fio") {
      o.fio = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown option --", name, " (see --help)"));
    }
  }
  (void)engines_given;
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
