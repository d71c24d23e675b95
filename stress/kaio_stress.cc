// kaio_stress: a long multithreaded run of the completion service that checks everything it can observe.
//
//   kaio_stress --threads=4 --ops=200000 --mix=read=30,write=30,cancel=10 --queue_depth=32 --seed=42
//   kaio_stress --help    (absl flags: --name=value, or --name value)
//
// Every worker thread owns a Requester and a share of the blocks of --files files. Writers put a
// self-describing header in every block (stress/block_format.h: file, block, writer, sequence,
// checksum); readers verify every byte they read against the version the owner knows is on disk.
// At the end the driver checks: every ticket answered exactly once (a completion for an unknown or
// already-answered ticket is a failure), every slot of the slab back to free, the service's counters
// balanced against the driver's own, and every block on disk holding its last acknowledged version.
// Requesters come and go while others run (--churn), the run can end with Service::Shutdown() under
// load (--shutdown_under_load), and faults can be injected through the syscall seam (--faults).
//
// The seed is printed first, so a failing run replays the same choices (timing differs). One summary
// line ends the run; the exit status is 0 only if nothing failed (1: failures, 2: bad flags or setup,
// 3: the watchdog found the run stuck).
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "core/request.h"
#include "core/slot.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "runtime/engine.h"
#include "runtime/service_access.h"
#include "stress/block_format.h"
#include "tests/fault_syscalls.h"
#include "tools/cli.h"

namespace kaio::stress {
namespace {

using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- options

enum Action { kRead, kWrite, kReadv, kWritev, kFsync, kCancel, kWaitAll, kWaitAny, kPoll, kNumActions };
constexpr const char* kActionNames[kNumActions] = {"read",   "write",   "readv",   "writev", "fsync",
                                                   "cancel", "waitall", "waitany", "poll"};
constexpr const char* kDefaultMix = "read=30,write=30,readv=8,writev=8,fsync=4,cancel=8,waitall=4,waitany=4,poll=4";
struct Options {
  int threads = 4;
  int64_t ops = 0;          // submissions across all threads (0: use duration_ms)
  int64_t duration_ms = 0;  // 0 and ops 0: ops = 20000
  std::array<int, kNumActions> mix{};
  std::string mix_text = kDefaultMix;
  int queue_depth = 32;
  int submit_batch = 16;
  int fallback_threads = 4;
  int64_t idle_release_ms = 30000;
  int files = 4;
  int blocks_per_file = 64;
  int inflight = 16;  // most requests one requester keeps outstanding
  bool direct = true;
  uint64_t seed = 0;
  bool seed_given = false;
  int churn = 400;  // replace a requester about every N actions (0: never)
  int inline_io = 0;  // percent of requesters created with RequesterOptions::inline_io
  bool shutdown_under_load = false;
  int faults = 0;  // per-mille rate of each enabled fault kind
  std::string fault_kinds = "all";
  std::string dir;
  int64_t watchdog_ms = 60000;  // no progress for this long: a hang
  int64_t wait_timeout_ms = 30000;
  bool verbose = false;
  // Take finished results with Return() (after WaitAll/WaitAny, and on random live tickets). Off: they
  // are collected by Poll/Wait only (to tell a Return() problem from others).
  bool use_return = true;
};

bool ParseInt(const std::string& text, int64_t min, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || *end != '\0' || v < min) return false;
  *out = v;
  return true;
}

bool ParseMix(const std::string& text, std::array<int, kNumActions>* mix, std::string* error) {
  mix->fill(0);
  size_t pos = 0;
  while (pos < text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string item = text.substr(pos, comma - pos);
    pos = comma + 1;
    size_t eq = item.find('=');
    std::string name = item.substr(0, eq);
    int64_t weight = 1;
    if (eq != std::string::npos && !ParseInt(item.substr(eq + 1), 0, &weight)) {
      *error = "bad weight in --mix item '" + item + "'";
      return false;
    }
    int found = -1;
    for (int a = 0; a < kNumActions; ++a) {
      if (name == kActionNames[a]) found = a;
    }
    if (found < 0) {
      *error = "unknown --mix action '" + name + "'";
      return false;
    }
    (*mix)[found] = static_cast<int>(weight);
  }
  int submits = (*mix)[kRead] + (*mix)[kWrite] + (*mix)[kReadv] + (*mix)[kWritev] + (*mix)[kFsync];
  if (submits == 0) {
    *error = "--mix must give a submitting action (read, write, readv, writev, fsync) a weight";
    return false;
  }
  return true;
}

}  // namespace
}  // namespace kaio::stress

ABSL_FLAG(int, threads, 4, "worker threads, one Requester each (1 to 256)");
ABSL_FLAG(int64_t, ops, 0, "requests to submit across all threads (default 20000 if no --duration_ms)");
ABSL_FLAG(int64_t, duration_ms, 0, "run for this long instead of a number of requests");
ABSL_FLAG(std::string, mix, kaio::stress::kDefaultMix,
          "a=W,b=W,...: weights of read write readv writev fsync cancel waitall waitany poll");
ABSL_FLAG(int, queue_depth, 32, "ServiceOptions::queue_depth, the kernel queue depth (1 to 65536)");
ABSL_FLAG(int, submit_batch, 16, "ServiceOptions::submit_batch (1 to 4096)");
ABSL_FLAG(int, fallback_threads, 4, "ServiceOptions::fallback_threads (0 to 256)");
ABSL_FLAG(int64_t, idle_release_ms, 30000, "ServiceOptions::idle_release");
ABSL_FLAG(int, files, 4, "data set: this many files (1 to 1024) of --blocks_per_file 4 KiB blocks");
ABSL_FLAG(int, blocks_per_file, 64, "4 KiB blocks per file (1 to 2^20)");
ABSL_FLAG(int, inflight, 16, "most requests outstanding per requester (1 to 4096)");
ABSL_FLAG(bool, direct, true, "open the files with O_DIRECT (--buffered: through the page cache)");
ABSL_FLAG(bool, buffered, false, "open the files through the page cache: the same as --direct=0");
ABSL_FLAG(uint64_t, seed, 0, "seed for every random choice (default: from the clock; always printed)");
ABSL_FLAG(int, churn, 400, "replace each thread's requester about every N actions; 0 never");
ABSL_FLAG(int, inline_io, 0, "this percent of requesters submit and reap on their own thread (0 to 100)");
ABSL_FLAG(bool, shutdown_under_load, false, "end with Service::Shutdown() while the workers still submit");
ABSL_FLAG(int, faults, 0, "inject each enabled fault with probability N/1000 per call (0 to 1000)");
ABSL_FLAG(std::string, fault_kinds, "all",
          "a,b,...: which faults: all, or of submit_eagain submit_partial submit_ebadf getevents_eintr "
          "getevents_short eventfd_read setup_eagain read_now_eagain");
ABSL_FLAG(std::string, dir, "", "where the data files go (default $TEST_TMPDIR or /tmp)");
ABSL_FLAG(int64_t, wait_timeout_ms, 30000, "a wait for a completion longer than this is a failure");
ABSL_FLAG(int64_t, watchdog_ms, 60000, "exit 3 after this long without progress");
ABSL_FLAG(bool, return, true, "take finished results with Return() as well as Poll/Wait");
ABSL_FLAG(bool, verbose, false, "progress lines");

namespace kaio::stress {
namespace {

constexpr char kUsage[] =
    "a long multithreaded run of the completion service that checks everything it can observe.\n\n"
    "usage: kaio_stress [flags]\n"
    "  e.g. kaio_stress --threads=4 --ops=200000 --mix=read=30,write=30,cancel=10 --queue_depth=32 --seed=42\n"
    "Exit status: 0 passed, 1 failures, 2 bad flags or setup, 3 the watchdog found the run stuck.";

bool ParseFlags(int argc, char** argv, Options* o, std::string* error) {
  using kaio_tools::Given;
  using kaio_tools::InRange;
  std::vector<std::string> positional = kaio_tools::ParseCommandLine(argc, argv, kUsage);
  if (!positional.empty()) {
    *error = "unexpected argument '" + positional[0] + "'";
    return false;
  }
  constexpr int64_t kMax = INT64_MAX;
  for (absl::Status s : {InRange(FLAGS_threads, 1, 256), InRange(FLAGS_ops, int64_t{0}, kMax),
                         InRange(FLAGS_duration_ms, int64_t{0}, kMax), InRange(FLAGS_queue_depth, 1, 65536),
                         InRange(FLAGS_submit_batch, 1, 4096), InRange(FLAGS_fallback_threads, 0, 256),
                         InRange(FLAGS_idle_release_ms, int64_t{0}, kMax), InRange(FLAGS_files, 1, 1024),
                         InRange(FLAGS_blocks_per_file, 1, 1 << 20), InRange(FLAGS_inflight, 1, 4096),
                         InRange(FLAGS_churn, 0, INT32_MAX), InRange(FLAGS_inline_io, 0, 100),
                         InRange(FLAGS_faults, 0, 1000), InRange(FLAGS_watchdog_ms, int64_t{1}, kMax),
                         InRange(FLAGS_wait_timeout_ms, int64_t{1}, kMax)}) {
    if (!s.ok()) {
      *error = std::string(s.message());
      return false;
    }
  }
  o->threads = absl::GetFlag(FLAGS_threads);
  o->ops = absl::GetFlag(FLAGS_ops);
  o->duration_ms = absl::GetFlag(FLAGS_duration_ms);
  o->mix_text = absl::GetFlag(FLAGS_mix);
  o->queue_depth = absl::GetFlag(FLAGS_queue_depth);
  o->submit_batch = absl::GetFlag(FLAGS_submit_batch);
  o->fallback_threads = absl::GetFlag(FLAGS_fallback_threads);
  o->idle_release_ms = absl::GetFlag(FLAGS_idle_release_ms);
  o->files = absl::GetFlag(FLAGS_files);
  o->blocks_per_file = absl::GetFlag(FLAGS_blocks_per_file);
  o->inflight = absl::GetFlag(FLAGS_inflight);
  // --buffered is --direct=0: both given must agree.
  o->direct = absl::GetFlag(FLAGS_direct);
  if (Given(FLAGS_buffered)) {
    if (Given(FLAGS_direct) && o->direct == absl::GetFlag(FLAGS_buffered)) {
      *error = "--direct and --buffered contradict each other: give one";
      return false;
    }
    o->direct = !absl::GetFlag(FLAGS_buffered);
  }
  o->seed = absl::GetFlag(FLAGS_seed);
  o->seed_given = Given(FLAGS_seed);
  o->churn = absl::GetFlag(FLAGS_churn);
  o->inline_io = absl::GetFlag(FLAGS_inline_io);
  o->shutdown_under_load = absl::GetFlag(FLAGS_shutdown_under_load);
  o->faults = absl::GetFlag(FLAGS_faults);
  o->fault_kinds = absl::GetFlag(FLAGS_fault_kinds);
  o->dir = absl::GetFlag(FLAGS_dir);
  o->watchdog_ms = absl::GetFlag(FLAGS_watchdog_ms);
  o->wait_timeout_ms = absl::GetFlag(FLAGS_wait_timeout_ms);
  o->verbose = absl::GetFlag(FLAGS_verbose);
  o->use_return = absl::GetFlag(FLAGS_return);
  if (!ParseMix(o->mix_text, &o->mix, error)) return false;
  if (o->ops == 0 && o->duration_ms == 0) o->ops = 20000;
  if (int64_t{o->files} * o->blocks_per_file < o->threads) {
    *error = "--files x --blocks_per_file must give every thread at least one block";
    return false;
  }
  return true;
}

bool ParseFaultKinds(const std::string& text, int per_mille, testing::RandomFaultRates* rates, std::string* error) {
  *rates = {};
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    std::string kind = text.substr(pos, comma - pos);
    pos = comma + 1;
    bool all = kind == "all";
    bool known = all;
    if (all || kind == "submit_eagain") rates->submit_eagain = per_mille, known = true;
    if (all || kind == "submit_partial") rates->submit_partial = per_mille, known = true;
    if (all || kind == "submit_ebadf") rates->submit_ebadf = per_mille, known = true;
    if (all || kind == "getevents_eintr") rates->getevents_eintr = per_mille, known = true;
    if (all || kind == "getevents_short") rates->getevents_short = per_mille, known = true;
    if (all || kind == "eventfd_read") rates->eventfd_read_eio = per_mille, known = true;
    if (all || kind == "setup_eagain") rates->setup_eagain = per_mille, known = true;
    if (all || kind == "read_now_eagain") rates->read_now_eagain = per_mille, known = true;
    if (!known && !kind.empty()) {
      *error = "unknown fault kind '" + kind + "'";
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------- shared state

class FailureLog {
 public:
  void Add(const char* format, ...) __attribute__((format(printf, 2, 3))) {
    char text[512];
    va_list args;
    va_start(args, format);
    std::vsnprintf(text, sizeof(text), format, args);
    va_end(args);
    std::lock_guard<std::mutex> lock(mu_);
    if (++count_ <= kMaxPrinted) std::fprintf(stderr, "kaio_stress: FAILURE: %s\n", text);
    if (count_ == kMaxPrinted + 1) std::fprintf(stderr, "kaio_stress: (further failures counted, not printed)\n");
  }
  uint64_t count() {
    std::lock_guard<std::mutex> lock(mu_);
    return count_;
  }

 private:
  static constexpr uint64_t kMaxPrinted = 40;
  std::mutex mu_;
  uint64_t count_ = 0;
};

struct Totals {
  std::atomic<uint64_t> submitted{0}, completed{0}, abandoned{0}, refused_after_shutdown{0};
  std::atomic<uint64_t> verified_reads{0}, verified_bytes{0}, writes_acked{0}, syncs{0};
  std::atomic<uint64_t> cancelled_results{0}, failed_results{0}, injected_failures_seen{0};
  std::atomic<uint64_t> cancel_canceled{0}, cancel_not_canceled{0}, cancel_all_done{0}, cancel_all_calls{0};
  std::atomic<uint64_t> cancel_revived{0};  // kNotCanceled, later kCanceled
  std::atomic<uint64_t> wait_alls{0}, wait_anys{0}, polls{0}, returns{0}, stale_checks{0}, cross_errors{0};
  std::atomic<uint64_t> requesters{0};
  std::atomic<uint64_t> inline_requesters{0};
  // Bounds for the service's counters where abandoned requests leave the outcome unknown.
  std::atomic<uint64_t> abandoned_cancelled{0}, abandoned_unknown{0};
};

struct Shared {
  Options opt;
  Service* service = nullptr;
  testing::FaultSyscalls* faults = nullptr;  // null when no faults are injected
  std::vector<int> fds;
  Clock::time_point start, end_by;  // end_by: when workers stop submitting (duration runs)
  FailureLog failures;
  Totals totals;
  std::atomic<bool> abort{false};            // a fatal failure (a hang): everyone stops
  std::atomic<bool> shutdown_started{false};
  std::atomic<bool> shutdown_returned{false};
  // Recently issued tickets of every thread, for Error() from other threads' requesters.
  // A ticket's two words, stored apart: a torn pair is one more ticket that is not the reader's.
  struct PublishedTicket {
    std::atomic<uint64_t> slot{0}, serial{0};
  };
  std::array<PublishedTicket, 256> published{};
};

struct AlignedFree {
  void operator()(uint8_t* p) const { free(p); }
};
using AlignedBytes = std::unique_ptr<uint8_t, AlignedFree>;
AlignedBytes AllocAligned(size_t size) {
  void* p = nullptr;
  if (posix_memalign(&p, kBlockSize, size) != 0) std::abort();
  return AlignedBytes(static_cast<uint8_t*>(p));
}

// ---------------------------------------------------------------- worker

struct BlockState {
  uint32_t file = 0, block = 0;
  std::vector<BlockVersion> possible{BlockVersion{}};  // what may be on disk (one unless ambiguous)
  bool busy = false;                                    // a request on it is outstanding
};

enum class Kind { kRead, kWrite, kReadv, kWritev, kFsync, kFdatasync };

struct Op {
  bool active = false;
  uint64_t tag = 0;
  Ticket ticket;
  Kind kind = Kind::kRead;
  int block = -1;  // index into the worker's blocks, -1 for syncs
  int fd = -1;
  BlockVersion version;  // what a write puts there
  std::array<struct iovec, 4> iov{};
  int iovcnt = 0;
  bool cancel_said_canceled = false;  // Cancel answered kCanceled
  bool cancel_said_running = false;   // Cancel answered kNotCanceled
  bool cancel_said_done = false;      // Cancel answered kAllDone (after kCanceled: it finished cancelled)
  bool maybe_cancelled = false;       // covered by a CancelAll
};

class Worker {
 public:
  Worker(Shared& shared, int id)
      : s_(shared), id_(id), rng_(shared.opt.seed ^ (0x51ed27a3ull * (id + 1))), scratch_(AllocAligned(kBlockSize)) {
    const Options& o = s_.opt;
    for (int f = 0; f < o.files; ++f) {
      for (int b = 0; b < o.blocks_per_file; ++b) {
        if ((f * o.blocks_per_file + b) % o.threads != id_) continue;
        BlockState st;
        st.file = static_cast<uint32_t>(f);
        st.block = static_cast<uint32_t>(b);
        blocks_.push_back(st);
      }
    }
    ops_.resize(static_cast<size_t>(o.inflight));
    for (int i = 0; i < o.inflight; ++i) {
      buffers_.push_back(AllocAligned(kBlockSize));
      free_ops_.push_back(o.inflight - 1 - i);
    }
    budget_ = o.ops == 0 ? INT64_MAX : o.ops / o.threads + (id_ < o.ops % o.threads ? 1 : 0);
    for (int a = 0; a < kNumActions; ++a) weight_total_ += o.mix[a];
  }

  void Run() {
    NewRequester();
    while (!s_.abort.load(std::memory_order_relaxed) && KeepSubmitting()) {
      Step();
      if (s_.opt.churn > 0 && ++actions_since_churn_ >= next_churn_) Churn();
    }
    Drain();
    DestroyRequester(/*abandon=*/false);
  }

  // Blocks as the driver last knows them, for the final pass over the files.
  const std::vector<BlockState>& blocks() const { return blocks_; }

 private:
  uint64_t Rand() { return SplitMix64(rng_); }
  int RandBelow(int n) { return static_cast<int>(Rand() % static_cast<uint64_t>(n)); }

  bool KeepSubmitting() {
    if (refused_) return false;
    if (s_.opt.shutdown_under_load) {
      // Only the shutdown ends the run; a cap keeps a broken shutdown from running forever.
      return Clock::now() < s_.end_by + std::chrono::seconds(60);
    }
    if (s_.opt.ops > 0) return submitted_ < budget_;
    return Clock::now() < s_.end_by;
  }

  void Fail(const char* what, const Op* op, int64_t result) {
    if (op == nullptr) {
      s_.failures.Add("thread %d: %s", id_, what);
      return;
    }
    const BlockState* b = op->block >= 0 ? &blocks_[op->block] : nullptr;
    s_.failures.Add("thread %d: %s (op kind %d tag %llu ticket %016llx fd %d file %d block %d result %lld)", id_,
                    what, static_cast<int>(op->kind), static_cast<unsigned long long>(op->tag),
                    static_cast<unsigned long long>(op->ticket.serial()), op->fd, b ? static_cast<int>(b->file) : -1,
                    b ? static_cast<int>(b->block) : -1, static_cast<long long>(result));
  }

  void NewRequester() {
    RequesterOptions options;
    options.inline_io = RandBelow(100) < s_.opt.inline_io;
    auto r = Requester::Create(*s_.service, options);
    if (!r.ok()) {
      s_.failures.Add("thread %d: Requester::Create: %s", id_, r.status().ToString().c_str());
      s_.abort.store(true);
      return;
    }
    requester_ = *std::move(r);
    s_.totals.requesters.fetch_add(1, std::memory_order_relaxed);
    if (options.inline_io) s_.totals.inline_requesters.fetch_add(1, std::memory_order_relaxed);
    actions_since_churn_ = 0;
    next_churn_ = s_.opt.churn > 0 ? s_.opt.churn / 2 + RandBelow(s_.opt.churn + 1) : 0;
  }

  void Step() {
    if (requester_ == nullptr) {
      s_.abort.store(true);
      return;
    }
    int pick = RandBelow(weight_total_);
    int action = 0;
    while (pick >= s_.opt.mix[action]) pick -= s_.opt.mix[action++];
    switch (action) {
      case kRead:
      case kWrite:
      case kReadv:
      case kWritev:
      case kFsync:
        if (free_ops_.empty()) {
          Collect(1);
          return;
        }
        Submit(static_cast<Action>(action));
        return;
      case kCancel:
        DoCancel();
        return;
      case kWaitAll:
        DoWaitAll();
        return;
      case kWaitAny:
        DoWaitAny();
        return;
      case kPoll:
        DoPoll();
        return;
    }
  }

  // ---- submission

  int PickIdleBlock() {
    if (blocks_.empty()) return -1;
    for (int tries = 0; tries < 8; ++tries) {
      int b = RandBelow(static_cast<int>(blocks_.size()));
      if (!blocks_[b].busy) return b;
    }
    return -1;
  }

  // Splits the block buffer into 2-4 segments (multiples of 512 bytes for O_DIRECT).
  void SplitIov(Op& op, uint8_t* buf) {
    int n = 2 + RandBelow(3);
    size_t unit = s_.opt.direct ? 512 : 1;
    size_t units = kBlockSize / unit;
    std::vector<size_t> cuts;
    while (static_cast<int>(cuts.size()) < n - 1) {
      size_t c = 1 + Rand() % (units - 1);
      if (std::find(cuts.begin(), cuts.end(), c) == cuts.end()) cuts.push_back(c);
    }
    std::sort(cuts.begin(), cuts.end());
    size_t prev = 0;
    for (int i = 0; i < n; ++i) {
      size_t next = i + 1 < n ? cuts[i] * unit : kBlockSize;
      op.iov[i].iov_base = buf + prev;
      op.iov[i].iov_len = next - prev;
      prev = next;
    }
    op.iovcnt = n;
  }

  void Submit(Action action) {
    int oi = free_ops_.back();
    Op& op = ops_[oi];
    op = Op{};
    uint8_t* buf = buffers_[oi].get();
    if (action == kFsync) {
      op.kind = (Rand() & 1) ? Kind::kFsync : Kind::kFdatasync;
      op.fd = s_.fds[RandBelow(static_cast<int>(s_.fds.size()))];
    } else {
      int b = PickIdleBlock();
      if (b < 0) {  // all our blocks are busy: collect instead
        Collect(1);
        return;
      }
      op.block = b;
      op.fd = s_.fds[blocks_[b].file];
      bool write = action == kWrite || action == kWritev;
      op.kind = action == kRead ? Kind::kRead : action == kWrite ? Kind::kWrite : action == kReadv ? Kind::kReadv : Kind::kWritev;
      if (write) {
        op.version = BlockVersion{static_cast<uint32_t>(id_ + 1), ++write_sequence_};
        FormatBlock(buf, s_.opt.seed, blocks_[b].file, blocks_[b].block, op.version);
      } else {
        std::memset(buf, 0xa5, kBlockSize);  // poison: a read that writes nothing cannot pass
      }
      if (action == kReadv || action == kWritev) SplitIov(op, buf);
    }
    op.tag = (++tag_serial_ << 16) | static_cast<uint64_t>(oi);
    const int64_t offset = op.block >= 0 ? int64_t{blocks_[op.block].block} * static_cast<int64_t>(kBlockSize) : 0;
    const bool shutdown_done_before = s_.shutdown_returned.load(std::memory_order_seq_cst);
    absl::StatusOr<Ticket> t;
    switch (op.kind) {
      case Kind::kRead:
        t = requester_->Read(op.fd, buf, kBlockSize, offset, op.tag);
        break;
      case Kind::kWrite:
        t = requester_->Write(op.fd, buf, kBlockSize, offset, op.tag);
        break;
      case Kind::kReadv:
        t = requester_->Readv(op.fd, op.iov.data(), op.iovcnt, offset, op.tag);
        break;
      case Kind::kWritev:
        t = requester_->Writev(op.fd, op.iov.data(), op.iovcnt, offset, op.tag);
        break;
      case Kind::kFsync:
        t = requester_->Fsync(op.fd, op.tag);
        break;
      case Kind::kFdatasync:
        t = requester_->Fdatasync(op.fd, op.tag);
        break;
    }
    if (!t.ok()) {
      if (t.status().code() == absl::StatusCode::kFailedPrecondition &&
          s_.shutdown_started.load(std::memory_order_seq_cst)) {
        refused_ = true;
        s_.totals.refused_after_shutdown.fetch_add(1, std::memory_order_relaxed);
      } else {
        Fail(("submission refused: " + t.status().ToString()).c_str(), &op, 0);
      }
      return;
    }
    if (shutdown_done_before) Fail("a submission was accepted after Service::Shutdown() returned", &op, 0);
    free_ops_.pop_back();
    op.ticket = *t;
    op.active = true;
    ++active_;
    if (op.block >= 0) blocks_[op.block].busy = true;
    ++submitted_;
    s_.totals.submitted.fetch_add(1, std::memory_order_relaxed);
    auto& slot = s_.published[Rand() % s_.published.size()];
    slot.slot.store(t->slot(), std::memory_order_relaxed);
    slot.serial.store(t->serial(), std::memory_order_relaxed);
  }

  // ---- completion

  int64_t ExpectedBytes(const Op& op) const { return op.kind == Kind::kFsync || op.kind == Kind::kFdatasync ? 0 : kBlockSize; }

  // Checks a read buffer against what the block may hold; narrows the block's state on success.
  bool VerifyRead(const Op& op, const uint8_t* buf) {
    BlockState& b = blocks_[op.block];
    BlockVersion found;
    std::string why;
    if (!VerifyBlock(buf, s_.opt.seed, b.file, b.block, &found, &why, scratch_.get())) {
      Fail(("read returned bad data: " + why).c_str(), &op, kBlockSize);
      return false;
    }
    if (std::find(b.possible.begin(), b.possible.end(), found) == b.possible.end()) {
      char text[200];
      std::snprintf(text, sizeof(text), "read returned a stale or foreign version: writer %u seq %llu, expected writer %u seq %llu",
                    found.writer, static_cast<unsigned long long>(found.sequence), b.possible.back().writer,
                    static_cast<unsigned long long>(b.possible.back().sequence));
      Fail(text, &op, kBlockSize);
      b.possible.assign(1, found);  // report each loss once, not again on every later read
      return false;
    }
    b.possible.assign(1, found);
    s_.totals.verified_reads.fetch_add(1, std::memory_order_relaxed);
    s_.totals.verified_bytes.fetch_add(kBlockSize, std::memory_order_relaxed);
    return true;
  }

  void Finish(int oi, int64_t result) {
    Op& op = ops_[oi];
    const bool is_write = op.kind == Kind::kWrite || op.kind == Kind::kWritev;
    const bool is_read = op.kind == Kind::kRead || op.kind == Kind::kReadv;
    if (result == -ECANCELED) {
      if (!op.cancel_said_canceled && !op.maybe_cancelled) Fail("ECANCELED but no Cancel said kCanceled", &op, result);
      if (op.cancel_said_running && !op.maybe_cancelled) Fail("ECANCELED after Cancel said kNotCanceled", &op, result);
      s_.totals.cancelled_results.fetch_add(1, std::memory_order_relaxed);
      // A cancelled write never ran: the block keeps what it had.
    } else if (op.cancel_said_canceled) {
      Fail("Cancel said kCanceled, yet the request delivered another result", &op, result);
      if (is_write) blocks_[op.block].possible.push_back(op.version);
    } else if (result < 0) {
      if (s_.faults != nullptr && result == -EBADF) {
        s_.totals.injected_failures_seen.fetch_add(1, std::memory_order_relaxed);  // io_submit refused it
      } else {
        char text[64];
        std::snprintf(text, sizeof(text), "request failed with errno %lld", static_cast<long long>(-result));
        Fail(text, &op, result);
        if (is_write) blocks_[op.block].possible.push_back(op.version);  // unknown: either may be there
      }
      s_.totals.failed_results.fetch_add(1, std::memory_order_relaxed);
    } else if (result != ExpectedBytes(op)) {
      Fail("wrong byte count", &op, result);
      if (is_write) blocks_[op.block].possible.push_back(op.version);
    } else if (is_read) {
      VerifyRead(op, buffers_[oi].get());
    } else if (is_write) {
      blocks_[op.block].possible.assign(1, op.version);
      s_.totals.writes_acked.fetch_add(1, std::memory_order_relaxed);
    } else {
      s_.totals.syncs.fetch_add(1, std::memory_order_relaxed);
    }
    Release(oi);
    s_.totals.completed.fetch_add(1, std::memory_order_relaxed);
    if ((Rand() & 7) == 0) StaleChecks(op.ticket);
  }

  void Release(int oi) {
    Op& op = ops_[oi];
    if (op.block >= 0) blocks_[op.block].busy = false;
    op.active = false;
    --active_;
    free_ops_.push_back(oi);
  }

  // A consumed ticket must be stale everywhere, never another request's answer.
  void StaleChecks(Ticket stale) {
    s_.totals.stale_checks.fetch_add(1, std::memory_order_relaxed);
    if (int e = requester_->Error(stale); e != EINVAL) Fail(("Error() of a consumed ticket is " + std::to_string(e)).c_str(), nullptr, 0);
    if (int64_t r = requester_->Return(stale); r != -EINVAL) Fail(("Return() of a consumed ticket is " + std::to_string(r)).c_str(), nullptr, 0);
    auto c = requester_->Cancel(stale);
    if (c.ok() || c.status().code() != absl::StatusCode::kInvalidArgument) Fail("Cancel() of a consumed ticket is not INVALID_ARGUMENT", nullptr, 0);
  }

  // Looks up a completion handed back by Poll/Wait; -1 (and a failure) if it answers nothing we wait for.
  int Match(const Completion& c) {
    uint32_t oi = static_cast<uint32_t>(c.tag & 0xffff);
    if (oi >= ops_.size() || !ops_[oi].active || ops_[oi].tag != c.tag || ops_[oi].ticket != c.ticket) {
      char text[200];
      std::snprintf(text, sizeof(text),
                    "completion for an unknown or already-answered request (tag %llu ticket %016llx result %lld): "
                    "delivered twice, or to the wrong requester",
                    static_cast<unsigned long long>(c.tag), static_cast<unsigned long long>(c.ticket.serial()),
                    static_cast<long long>(c.result));
      Fail(text, nullptr, 0);
      return -1;
    }
    return static_cast<int>(oi);
  }

  // A requester's in_flight() is accepted - delivered; a completion delivered twice drives delivered past
  // accepted and the difference wraps. (It may exceed our count of outstanding requests for a moment:
  // Return() can take a result between the slot's completion and its delivery.)
  void CheckInFlight() {
    uint64_t in_flight = requester_->in_flight();
    if (in_flight > (uint64_t{1} << 62)) {
      Fail(("requester in_flight() is " + std::to_string(static_cast<int64_t>(in_flight)) +
            ": more completions delivered than requests accepted (a completion delivered twice?)")
               .c_str(),
           nullptr, 0);
    }
  }

  void Process(absl::Span<const Completion> done) {
    for (const Completion& c : done) {
      int oi = Match(c);
      if (oi >= 0) Finish(oi, c.result);
    }
  }

  // Waits for at least `min` completions (bounded: longer is a hang).
  void Collect(size_t min) {
    if (active_ == 0) return;
    std::array<Completion, 16> out;
    min = std::min<size_t>(min, static_cast<size_t>(active_));
    size_t got = requester_->Wait(absl::MakeSpan(out), min, absl::Milliseconds(s_.opt.wait_timeout_ms));
    Process(absl::MakeConstSpan(out.data(), got));
    if (got < min) Hang("Wait");
    CheckInFlight();
  }

  void Hang(const char* where) {
    char text[200];
    std::snprintf(text, sizeof(text), "%s: no completion within %lld ms with %d requests outstanding (lost completion or hang)",
                  where, static_cast<long long>(s_.opt.wait_timeout_ms), active_);
    Fail(text, nullptr, 0);
    s_.abort.store(true);
  }

  void Drain() {
    while (active_ > 0 && !s_.abort.load()) Collect(static_cast<size_t>(active_));
  }

  std::vector<int> PickActive(int max) {
    std::vector<int> all;
    for (int i = 0; i < static_cast<int>(ops_.size()); ++i) {
      if (ops_[i].active) all.push_back(i);
    }
    std::vector<int> picked;
    int k = all.empty() ? 0 : 1 + RandBelow(std::min<int>(max, static_cast<int>(all.size())));
    for (int j = 0; j < k; ++j) {
      int r = j + RandBelow(static_cast<int>(all.size()) - j);
      std::swap(all[j], all[r]);
      picked.push_back(all[j]);
    }
    return picked;
  }

  // Error() and Return() of a finished request agree, and Return() consumes it.
  void ReturnFinished(int oi, const char* how) {
    Op& op = ops_[oi];
    int e = requester_->Error(op.ticket);
    if (e == EINPROGRESS || e == EINVAL) {
      Fail((std::string(how) + " reported the request finished, but Error() is " + std::to_string(e)).c_str(), &op, 0);
      return;
    }
    int64_t r = requester_->Return(op.ticket);
    s_.totals.returns.fetch_add(1, std::memory_order_relaxed);
    if (r == -EINPROGRESS || r == -EINVAL) {
      Fail((std::string(how) + " reported the request finished, but Return() is " + std::to_string(r)).c_str(), &op, r);
      return;
    }
    if (e != (r < 0 ? static_cast<int>(-r) : 0)) Fail("Error() and Return() disagree", &op, r);
    Finish(oi, r);
  }

  void DoWaitAll() {
    std::vector<int> picked = PickActive(8);
    if (picked.empty()) return;
    std::vector<Ticket> tickets;
    for (int oi : picked) tickets.push_back(ops_[oi].ticket);
    s_.totals.wait_alls.fetch_add(1, std::memory_order_relaxed);
    absl::Status st = requester_->WaitAll(tickets, absl::Milliseconds(s_.opt.wait_timeout_ms));
    if (!st.ok()) {
      if (st.code() == absl::StatusCode::kDeadlineExceeded) {
        Hang("WaitAll");
      } else {
        Fail(("WaitAll over live tickets: " + st.ToString()).c_str(), nullptr, 0);
      }
      return;
    }
    for (int oi : picked) {
      if (s_.opt.use_return) {
        ReturnFinished(oi, "WaitAll");
      } else if (int e = requester_->Error(ops_[oi].ticket); e == EINPROGRESS || e == EINVAL) {
        Fail(("WaitAll reported the request finished, but Error() is " + std::to_string(e)).c_str(), &ops_[oi], 0);
      }
    }
  }

  void DoWaitAny() {
    std::vector<int> picked = PickActive(8);
    if (picked.empty()) return;
    std::vector<Ticket> tickets;
    for (int oi : picked) tickets.push_back(ops_[oi].ticket);
    s_.totals.wait_anys.fetch_add(1, std::memory_order_relaxed);
    absl::StatusOr<size_t> i = requester_->WaitAny(tickets, absl::Milliseconds(s_.opt.wait_timeout_ms));
    if (!i.ok()) {
      if (i.status().code() == absl::StatusCode::kDeadlineExceeded) {
        Hang("WaitAny");
      } else {
        Fail(("WaitAny over live tickets: " + i.status().ToString()).c_str(), nullptr, 0);
      }
      return;
    }
    if (*i >= picked.size()) {
      Fail("WaitAny returned a position outside the list", nullptr, 0);
      return;
    }
    if (s_.opt.use_return) {
      ReturnFinished(picked[*i], "WaitAny");
    } else if (int e = requester_->Error(ops_[picked[*i]].ticket); e == EINPROGRESS || e == EINVAL) {
      Fail(("WaitAny reported the request finished, but Error() is " + std::to_string(e)).c_str(), &ops_[picked[*i]], 0);
    }
  }

  void DoPoll() {
    s_.totals.polls.fetch_add(1, std::memory_order_relaxed);
    std::array<Completion, 8> out;
    size_t got = requester_->Poll(absl::MakeSpan(out));
    Process(absl::MakeConstSpan(out.data(), got));
    // Return() on a live ticket: -EINPROGRESS, or its result (then it is consumed).
    if (std::vector<int> one = s_.opt.use_return ? PickActive(1) : std::vector<int>{}; !one.empty()) {
      Op& op = ops_[one[0]];
      int64_t r = requester_->Return(op.ticket);
      s_.totals.returns.fetch_add(1, std::memory_order_relaxed);
      if (r == -EINVAL) {
        Fail("Return() of a live ticket is EINVAL", &op, r);
      } else if (r != -EINPROGRESS) {
        Finish(one[0], r);
      }
    }
    // Ask our requester about a ticket some thread issued (maybe this one), maybe long consumed:
    // another requester's is EINVAL (tickets name their requester), our own its state.
    const auto& published = s_.published[Rand() % s_.published.size()];
    const Ticket other(published.slot.load(std::memory_order_relaxed), published.serial.load(std::memory_order_relaxed));
    if (other.valid()) {
      s_.totals.cross_errors.fetch_add(1, std::memory_order_relaxed);
      int e = requester_->Error(other);
      if (e != EINPROGRESS && e != 0 && e != EINVAL && e != ECANCELED && !(s_.faults != nullptr && e == EBADF)) {
        Fail(("Error() of a published ticket is " + std::to_string(e)).c_str(), nullptr, 0);
      }
    }
    CheckInFlight();
  }

  void DoCancel() {
    if ((Rand() & 15) == 0) {
      // CancelAll over one file: every request of ours on it may end cancelled.
      int file = RandBelow(static_cast<int>(s_.fds.size()));
      // (Even one an earlier Cancel said kNotCanceled for: a buffered request the kernel refused with
      // RWF_NOWAIT goes back to the pool's queue, where it can be cancelled after all.)
      for (Op& op : ops_) {
        if (op.active && op.fd == s_.fds[file]) op.maybe_cancelled = true;
      }
      s_.totals.cancel_all_calls.fetch_add(1, std::memory_order_relaxed);
      requester_->CancelAll(s_.fds[file]);
      return;
    }
    std::vector<int> one = PickActive(1);
    if (one.empty()) return;
    Op& op = ops_[one[0]];
    absl::StatusOr<CancelResult> r = requester_->Cancel(op.ticket);
    if (!r.ok()) {
      Fail(("Cancel of a live ticket: " + r.status().ToString()).c_str(), &op, 0);
      return;
    }
    int e = requester_->Error(op.ticket);
    switch (*r) {
      case CancelResult::kCanceled:
        s_.totals.cancel_canceled.fetch_add(1, std::memory_order_relaxed);
        if (op.cancel_said_done) Fail("Cancel said kCanceled after an earlier kAllDone", &op, 0);
        if (op.cancel_said_running) {
          // kNotCanceled, then kCanceled: a buffered request the kernel refused (RWF_NOWAIT) went back
          // from the kernel to the pool's queue, where it can be cancelled. The latest answer holds.
          s_.totals.cancel_revived.fetch_add(1, std::memory_order_relaxed);
          op.cancel_said_running = false;
        }
        op.cancel_said_canceled = true;
        if (e != ECANCELED) Fail(("Cancel said kCanceled but Error() is " + std::to_string(e)).c_str(), &op, 0);
        break;
      case CancelResult::kNotCanceled:
        s_.totals.cancel_not_canceled.fetch_add(1, std::memory_order_relaxed);
        if (op.cancel_said_canceled || op.cancel_said_done) {
          Fail("Cancel said kNotCanceled after an earlier kCanceled or kAllDone", &op, 0);
        }
        op.cancel_said_running = true;
        break;
      case CancelResult::kAllDone:
        // Finished: with its real result, or cancelled if an earlier Cancel said kCanceled.
        s_.totals.cancel_all_done.fetch_add(1, std::memory_order_relaxed);
        op.cancel_said_done = true;
        if (e == EINPROGRESS) Fail("Cancel said kAllDone but Error() is EINPROGRESS", &op, 0);
        if ((e == ECANCELED && !op.cancel_said_canceled && !op.maybe_cancelled) ||
            (e != ECANCELED && op.cancel_said_canceled)) {
          Fail(("Cancel said kAllDone and Error() is " + std::to_string(e) + ", which disagrees with earlier Cancel answers").c_str(), &op, 0);
        }
        break;
    }
  }

  // ---- requesters that come and go

  void Churn() {
    if (Rand() & 1) Drain();
    DestroyRequester(/*abandon=*/true);
    if (!s_.abort.load()) NewRequester();
  }

  // Destroys the requester; outstanding requests are abandoned: the destructor must wait for them (their
  // buffers are ours), so afterwards every abandoned read's buffer must hold its block.
  void DestroyRequester(bool abandon) {
    if (requester_ == nullptr) return;
    if (!abandon && active_ > 0) return;  // a hang left requests behind; the watchdog reports it
    CheckInFlight();
    requester_.reset();
    for (int oi = 0; oi < static_cast<int>(ops_.size()); ++oi) {
      Op& op = ops_[oi];
      if (!op.active) continue;
      s_.totals.abandoned.fetch_add(1, std::memory_order_relaxed);
      const bool uncertain = op.maybe_cancelled || s_.faults != nullptr;
      if (op.cancel_said_canceled) {
        s_.totals.abandoned_cancelled.fetch_add(1, std::memory_order_relaxed);
      } else if (uncertain) {
        s_.totals.abandoned_unknown.fetch_add(1, std::memory_order_relaxed);
      }
      if (op.block >= 0 && !op.cancel_said_canceled) {
        if (op.kind == Kind::kRead || op.kind == Kind::kReadv) {
          if (!uncertain) VerifyRead(op, buffers_[oi].get());
        } else if (op.kind == Kind::kWrite || op.kind == Kind::kWritev) {
          if (uncertain) {
            blocks_[op.block].possible.push_back(op.version);
          } else {
            blocks_[op.block].possible.assign(1, op.version);
          }
        }
      }
      Release(oi);
    }
  }

  Shared& s_;
  const int id_;
  uint64_t rng_;
  AlignedBytes scratch_;
  std::vector<BlockState> blocks_;
  std::vector<Op> ops_;
  std::vector<AlignedBytes> buffers_;
  std::vector<int> free_ops_;
  int active_ = 0;
  int weight_total_ = 0;
  int64_t budget_ = 0;
  int64_t submitted_ = 0;
  uint64_t tag_serial_ = 0;
  uint64_t write_sequence_ = 0;
  bool refused_ = false;
  int actions_since_churn_ = 0;
  int next_churn_ = 0;
  std::unique_ptr<Requester> requester_;
};

// ---------------------------------------------------------------- setup and final checks

bool OpenFiles(Shared& s, std::string* error) {
  const Options& o = s.opt;
  AlignedBytes buf = AllocAligned(kBlockSize);
  for (int f = 0; f < o.files; ++f) {
    std::string path = o.dir + "/kaio_stress." + std::to_string(getpid()) + "." + std::to_string(f);
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | (o.direct ? O_DIRECT : 0), 0600);
    if (fd < 0) {
      *error = "open(" + path + (o.direct ? ", O_DIRECT" : "") + "): " + std::strerror(errno) +
               (o.direct && errno == EINVAL ? " (this filesystem has no O_DIRECT: use --buffered or --dir)" : "");
      return false;
    }
    unlink(path.c_str());  // nothing is left behind, whatever happens
    s.fds.push_back(fd);
    for (int b = 0; b < o.blocks_per_file; ++b) {
      FormatBlock(buf.get(), o.seed, static_cast<uint32_t>(f), static_cast<uint32_t>(b), BlockVersion{});
      if (pwrite(fd, buf.get(), kBlockSize, static_cast<off_t>(b) * kBlockSize) != static_cast<ssize_t>(kBlockSize)) {
        *error = "prefilling " + path + ": " + std::strerror(errno);
        return false;
      }
    }
    if (fsync(fd) != 0) {
      *error = "fsync " + path + ": " + std::strerror(errno);
      return false;
    }
  }
  return true;
}

// Reads every block back with pread and checks it holds the last version the driver saw acknowledged.
uint64_t FinalPass(Shared& s, const std::vector<std::unique_ptr<Worker>>& workers) {
  AlignedBytes buf = AllocAligned(kBlockSize), scratch = AllocAligned(kBlockSize);
  uint64_t bytes = 0;
  for (const auto& w : workers) {
    for (const BlockState& b : w->blocks()) {
      ssize_t n = pread(s.fds[b.file], buf.get(), kBlockSize, static_cast<off_t>(b.block) * kBlockSize);
      if (n != static_cast<ssize_t>(kBlockSize)) {
        s.failures.Add("final pass: pread of file %u block %u returned %zd", b.file, b.block, n);
        continue;
      }
      BlockVersion found;
      std::string why;
      if (!VerifyBlock(buf.get(), s.opt.seed, b.file, b.block, &found, &why, scratch.get())) {
        s.failures.Add("final pass: file %u block %u: %s", b.file, b.block, why.c_str());
      } else if (std::find(b.possible.begin(), b.possible.end(), found) == b.possible.end()) {
        s.failures.Add("final pass: file %u block %u holds writer %u seq %llu, not the last acknowledged write (writer %u seq %llu): lost write",
                       b.file, b.block, found.writer, static_cast<unsigned long long>(found.sequence), b.possible.back().writer,
                       static_cast<unsigned long long>(b.possible.back().sequence));
      } else {
        bytes += kBlockSize;
      }
    }
  }
  return bytes;
}

// Every slot of the slab must be free once every requester is gone.
void CheckSlots(Shared& s) {
  core::SlotTable& slots = kaio::runtime::ServiceAccess::EngineOf(*s.service).slots();
  uint64_t leaked = 0;
  for (uint32_t i = 0; i < slots.allocated(); ++i) {
    uint64_t word = core::Look(slots.at(i));
    if (core::WordState(word) != core::SlotState::kFree) {
      if (++leaked <= 5) s.failures.Add("slot %u leaked in state %u", i, static_cast<unsigned>(core::WordState(word)));
    }
  }
  if (leaked > 5) s.failures.Add("%llu slots leaked in all", static_cast<unsigned long long>(leaked));
}

void CheckCounters(Shared& s, const ServiceStats& st) {
  const Totals& t = s.totals;
  auto eq = [&](const char* what, uint64_t service, uint64_t driver) {
    if (service != driver) {
      s.failures.Add("counter mismatch: %s: service says %llu, driver counted %llu", what,
                     static_cast<unsigned long long>(service), static_cast<unsigned long long>(driver));
    }
  };
  auto within = [&](const char* what, uint64_t service, uint64_t low, uint64_t high) {
    if (service < low || service > high) {
      s.failures.Add("counter mismatch: %s: service says %llu, driver expected %llu..%llu", what,
                     static_cast<unsigned long long>(service), static_cast<unsigned long long>(low),
                     static_cast<unsigned long long>(high));
    }
  };
  eq("requests_accepted vs submitted", st.requests_accepted, t.submitted.load());
  eq("requests_completed vs requests_accepted", st.requests_completed, st.requests_accepted);
  eq("in_flight", st.in_flight, 0);
  eq("answered + abandoned vs submitted", t.completed.load() + t.abandoned.load(), t.submitted.load());
  uint64_t cancelled = t.cancelled_results.load() + t.abandoned_cancelled.load();
  within("requests_cancelled", st.requests_cancelled, cancelled, cancelled + t.abandoned_unknown.load());
  within("requests_failed", st.requests_failed, t.failed_results.load(), t.failed_results.load() + t.abandoned_unknown.load());
  if (s.faults != nullptr) {
    uint64_t injected = s.faults->injected.submit_request_errors.load();
    within("requests failed by injected io_submit errors", injected, t.injected_failures_seen.load(),
           t.injected_failures_seen.load() + t.abandoned_unknown.load());
  }
}

int Main(int argc, char** argv) {
  Shared s;
  std::string error;
  if (!ParseFlags(argc, argv, &s.opt, &error)) {
    std::fprintf(stderr, "kaio_stress: %s\n", error.c_str());
    return 2;
  }
  Options& o = s.opt;
  if (!o.seed_given) o.seed = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ (uint64_t(getpid()) << 32);
  if (o.dir.empty()) {
    const char* tmp = getenv("TEST_TMPDIR");
    o.dir = tmp != nullptr ? tmp : "/tmp";
  }
  std::printf("kaio_stress: seed=%llu threads=%d %s=%lld mix=%s queue_depth=%d submit_batch=%d inflight=%d files=%d "
              "blocks_per_file=%d %s churn=%d inline_io=%d%% shutdown_under_load=%d faults=%d/1000(%s) "
              "fallback_threads=%d idle_release_ms=%lld return=%d\n",
              static_cast<unsigned long long>(o.seed), o.threads, o.ops > 0 ? "ops" : "duration_ms",
              static_cast<long long>(o.ops > 0 ? o.ops : o.duration_ms), o.mix_text.c_str(), o.queue_depth,
              o.submit_batch, o.inflight, o.files, o.blocks_per_file, o.direct ? "direct" : "buffered", o.churn,
              o.inline_io, o.shutdown_under_load ? 1 : 0, o.faults, o.fault_kinds.c_str(), o.fallback_threads,
              static_cast<long long>(o.idle_release_ms), o.use_return ? 1 : 0);
  std::fflush(stdout);

  testing::FaultSyscalls fault_syscalls;
  if (o.faults > 0) {
    testing::RandomFaultRates rates;
    if (!ParseFaultKinds(o.fault_kinds, o.faults, &rates, &error)) {
      std::fprintf(stderr, "kaio_stress: %s\n", error.c_str());
      return 2;
    }
    fault_syscalls.SetRandomFaults(o.seed * 31 + 7, rates);
    s.faults = &fault_syscalls;
  }
  if (!OpenFiles(s, &error)) {
    std::fprintf(stderr, "kaio_stress: %s\n", error.c_str());
    return 2;
  }
  ServiceOptions so;
  so.queue_depth = o.queue_depth;
  so.submit_batch = o.submit_batch;
  so.fallback_threads = o.fallback_threads;
  so.idle_release = absl::Milliseconds(o.idle_release_ms);
  auto service = kaio::runtime::ServiceAccess::CreateWithSyscalls(so, s.faults);
  if (!service.ok()) {
    std::fprintf(stderr, "kaio_stress: Service::Create: %s\n", service.status().ToString().c_str());
    return 2;
  }
  s.service = service->get();

  // The watchdog: a run that stops making progress (nothing submitted, answered or abandoned for
  // --watchdog_ms: a lost completion, or a thread stuck inside kaio, e.g. in a destructor or in
  // Shutdown(), which have no timeout) exits 3 with what is known, instead of hanging the test.
  std::mutex done_mu;
  std::condition_variable done_cv;
  bool done = false;
  s.start = Clock::now();
  s.end_by = s.start + std::chrono::milliseconds(o.duration_ms);
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lock(done_mu);
    uint64_t last = ~uint64_t{0};
    auto last_change = Clock::now();
    while (!done_cv.wait_for(lock, std::chrono::milliseconds(100), [&] { return done; })) {
      const uint64_t progress = s.totals.submitted.load() + s.totals.completed.load() + s.totals.abandoned.load() +
                                s.totals.refused_after_shutdown.load() + s.totals.requesters.load();
      if (progress != last) {
        last = progress;
        last_change = Clock::now();
      }
      if (Clock::now() - last_change >= std::chrono::milliseconds(o.watchdog_ms)) break;
    }
    if (done) return;
    ServiceStats st = s.service->Stats();
    std::fprintf(stderr,
                 "kaio_stress: WATCHDOG: no progress for %lld ms: a lost completion or a thread stuck in kaio. seed=%llu "
                 "submitted=%llu answered=%llu accepted=%llu completed=%llu in_flight=%llu kernel_submitted=%llu "
                 "io_submit_calls=%llu pool_requests=%llu faults_injected=%llu\n",
                 static_cast<long long>(o.watchdog_ms), static_cast<unsigned long long>(o.seed),
                 static_cast<unsigned long long>(s.totals.submitted.load()),
                 static_cast<unsigned long long>(s.totals.completed.load()),
                 static_cast<unsigned long long>(st.requests_accepted),
                 static_cast<unsigned long long>(st.requests_completed), static_cast<unsigned long long>(st.in_flight),
                 static_cast<unsigned long long>(st.kernel_submitted), static_cast<unsigned long long>(st.io_submit_calls),
                 static_cast<unsigned long long>(st.pool_requests),
                 static_cast<unsigned long long>(s.faults ? s.faults->injected.Total() : 0));
    std::printf("kaio_stress: FAIL (watchdog) seed=%llu\n", static_cast<unsigned long long>(o.seed));
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(3);
  });

  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < o.threads; ++i) workers.push_back(std::make_unique<Worker>(s, i));
  std::vector<std::thread> threads;
  for (int i = 0; i < o.threads; ++i) threads.emplace_back([&, i] { workers[i]->Run(); });

  if (o.shutdown_under_load) {
    // Shut down halfway through the planned work, while every worker is still submitting.
    const uint64_t half_ops = static_cast<uint64_t>(o.ops / 2);
    const auto half_time = s.start + std::chrono::milliseconds(o.duration_ms / 2);
    while (!s.abort.load() &&
           (o.ops > 0 ? s.totals.submitted.load() < half_ops : Clock::now() < half_time)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));  // polling a counter; nothing to wait on
    }
    s.shutdown_started.store(true, std::memory_order_seq_cst);
    s.service->Shutdown();
    s.shutdown_returned.store(true, std::memory_order_seq_cst);
    ServiceStats st = s.service->Stats();
    if (st.in_flight != 0) {
      s.failures.Add("Service::Shutdown() returned with %llu requests still in flight (accepted %llu, completed %llu)",
                     static_cast<unsigned long long>(st.in_flight), static_cast<unsigned long long>(st.requests_accepted),
                     static_cast<unsigned long long>(st.requests_completed));
    }
  }
  for (std::thread& t : threads) t.join();
  const auto run_end = Clock::now();
  if (s.abort.load()) {
    // A worker gave up on a lost completion: its requester still holds requests, so nothing can be torn
    // down safely. Report and leave.
    std::printf("kaio_stress: FAIL seed=%llu aborted after %llu failures (submitted=%llu answered=%llu)\n",
                static_cast<unsigned long long>(o.seed), static_cast<unsigned long long>(s.failures.count()),
                static_cast<unsigned long long>(s.totals.submitted.load()),
                static_cast<unsigned long long>(s.totals.completed.load()));
    std::fflush(stdout);
    std::fflush(stderr);
    _exit(1);
  }

  ServiceStats st = s.service->Stats();
  if (!s.abort.load()) {
    CheckCounters(s, st);
    CheckSlots(s);
  }
  uint64_t final_bytes = s.abort.load() ? 0 : FinalPass(s, workers);
  service->reset();
  {
    std::lock_guard<std::mutex> lock(done_mu);
    done = true;
  }
  done_cv.notify_all();
  watchdog.join();
  for (int fd : s.fds) close(fd);

  const Totals& t = s.totals;
  const uint64_t failures = s.failures.count();
  const auto elapsed_ms = std::chrono::duration_cast<std::chrono::milliseconds>(run_end - s.start).count();
  std::printf(
      "kaio_stress: %s seed=%llu ops=%llu completions=%llu abandoned=%llu verified_bytes=%llu "
      "(reads %llu, final pass %llu) writes=%llu syncs=%llu cancels=%llu/%llu/%llu/%llu(canceled/not/done/not-then-canceled) cancel_all=%llu "
      "ecanceled=%llu wait_all=%llu wait_any=%llu polls=%llu returns=%llu stale_checks=%llu requesters=%llu "
      "(inline %llu) refused_after_shutdown=%llu io_submit_calls=%llu (inline submitted %llu, reaped %llu) avg_batch=%.1f eagain=%llu pool=%llu nowait_retries=%llu "
      "contexts=%llu/%llu faults_injected=%llu failures=%llu elapsed_ms=%lld\n",
      failures == 0 ? "PASS" : "FAIL", static_cast<unsigned long long>(o.seed),
      static_cast<unsigned long long>(t.submitted.load()), static_cast<unsigned long long>(t.completed.load()),
      static_cast<unsigned long long>(t.abandoned.load()),
      static_cast<unsigned long long>(t.verified_bytes.load() + final_bytes),
      static_cast<unsigned long long>(t.verified_reads.load()), static_cast<unsigned long long>(final_bytes / kBlockSize),
      static_cast<unsigned long long>(t.writes_acked.load()), static_cast<unsigned long long>(t.syncs.load()),
      static_cast<unsigned long long>(t.cancel_canceled.load()), static_cast<unsigned long long>(t.cancel_not_canceled.load()),
      static_cast<unsigned long long>(t.cancel_all_done.load()), static_cast<unsigned long long>(t.cancel_revived.load()),
      static_cast<unsigned long long>(t.cancel_all_calls.load()),
      static_cast<unsigned long long>(t.cancelled_results.load()), static_cast<unsigned long long>(t.wait_alls.load()),
      static_cast<unsigned long long>(t.wait_anys.load()), static_cast<unsigned long long>(t.polls.load()),
      static_cast<unsigned long long>(t.returns.load()), static_cast<unsigned long long>(t.stale_checks.load()),
      static_cast<unsigned long long>(t.requesters.load()), static_cast<unsigned long long>(t.inline_requesters.load()),
      static_cast<unsigned long long>(t.refused_after_shutdown.load()),
      static_cast<unsigned long long>(st.io_submit_calls), static_cast<unsigned long long>(st.inline_submitted),
      static_cast<unsigned long long>(st.inline_reaped), st.average_batch,
      static_cast<unsigned long long>(st.io_submit_eagain), static_cast<unsigned long long>(st.pool_requests),
      static_cast<unsigned long long>(st.nowait_retries), static_cast<unsigned long long>(st.contexts_created),
      static_cast<unsigned long long>(st.contexts_released),
      static_cast<unsigned long long>(s.faults ? s.faults->injected.Total() : 0),
      static_cast<unsigned long long>(failures), static_cast<long long>(elapsed_ms));
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace kaio::stress

int main(int argc, char** argv) { return kaio::stress::Main(argc, argv); }
