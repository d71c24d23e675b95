// tpc_copy: a thread-per-core parallel file copier on kaio, and the reference for embedding kaio in an
// event loop.
//
//   tpc_copy [--threads=N] [--chunk=SIZE] [--depth=N] [--direct] [--no-verify] [--progress] SRC DST
//
// The source is cut into chunks and each core gets a contiguous share. One event loop per core, pinned
// to that core with sched_setaffinity, owns one kaio::Requester and waits in epoll on three fds:
//   - the requester's NotifyFd(): completions may be waiting; Poll() until it returns fewer than asked,
//     which re-arms it;
//   - a timerfd: a once-a-second tick for progress lines and a stall report;
//   - a shutdown eventfd shared by all loops: written on SIGINT/SIGTERM or when another loop fails.
// The loop never blocks in kaio: it only submits (Read/Write/Fdatasync never block) and Polls; it waits
// in epoll_wait alone. Each loop keeps up to --depth chunks in flight: a chunk is read, then written;
// short transfers are resubmitted for the rest. When its share is copied, the loop fdatasyncs the copy
// through kaio and verifies it: it reads each chunk back from both files, two requests at once, and
// compares them. On shutdown a loop stops submitting, cancels what is still queued (CancelAll), and
// collects every outstanding completion before it exits, because the buffers are its own.
//
// With --direct both files are opened O_DIRECT (kernel AIO proper: the kernel does the I/O
// asynchronously); without it, kaio sends the buffered requests the kernel would block on to its
// fallback pool. Exit status: 0 copied and verified, 1 an error (reported on stderr), 2 bad usage,
// 130 interrupted.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "kaio/types.h"
#include "tools/cli.h"
#include "tools/clock.h"
#include "tools/size_flag.h"

namespace {

constexpr size_t kAlign = 4096;  // O_DIRECT buffer, offset and length alignment used here

struct Options {
  int threads = 0;  // 0: one per CPU this process may run on
  size_t chunk = 1 << 20;
  int depth = 8;  // chunks in flight per core
  bool direct = false;
  bool verify = true;
  bool progress = false;
  int64_t test_interrupt_after = -1;  // test hook: loop 0 raises SIGINT after this many chunks
  std::string src, dst;
};

constexpr char kUsage[] =
    "usage: tpc_copy [--threads=N] [--chunk=SIZE] [--depth=N] [--direct] [--no-verify] [--progress] SRC DST\n"
    "  --threads=N   event loops, one pinned per CPU (default: every CPU this process may use)\n"
    "  --chunk=SIZE  bytes per request, a multiple of 4096 (K/M suffixes; default 1M)\n"
    "  --depth=N     chunks in flight per loop (default 8)\n"
    "  --direct      open both files O_DIRECT\n"
    "  --no-verify   skip reading the copy back and comparing it\n"
    "  --progress    print each loop's progress once a second\n";

}  // namespace

ABSL_FLAG(int, threads, 0, "event loops, one pinned per CPU, 1 to 1024 (0: every CPU this process may use)");
ABSL_FLAG(kaio_tools::Size, chunk, kaio_tools::Size(1 << 20), "bytes per request, a multiple of 4096, at most 1g");
ABSL_FLAG(int, depth, 8, "chunks in flight per loop (1 to 4096)");
ABSL_FLAG(bool, direct, false, "open both files O_DIRECT");
ABSL_FLAG(bool, no_verify, false, "skip reading the copy back and comparing it");
ABSL_FLAG(bool, progress, false, "print each loop's progress once a second");
ABSL_FLAG(int64_t, test_interrupt_after, -1, "test hook: loop 0 raises SIGINT after this many chunks");

namespace {

// Fills `options` from the flags; false (after saying why on stderr) for a value out of range or not two
// file names.
bool ParseArgs(int argc, char** argv, Options* options) {
  std::vector<std::string> positional = kaio_tools::ParseCommandLine(argc, argv, kUsage);
  const size_t chunk = absl::GetFlag(FLAGS_chunk).bytes;
  const int64_t interrupt_after = absl::GetFlag(FLAGS_test_interrupt_after);
  std::string error;
  if (absl::Status s = kaio_tools::InRange(FLAGS_depth, 1, 4096); !s.ok()) error = std::string(s.message());
  if (kaio_tools::Given(FLAGS_threads)) {
    if (absl::Status s = kaio_tools::InRange(FLAGS_threads, 1, 1024); !s.ok()) error = std::string(s.message());
  }
  if (chunk == 0 || chunk % kAlign != 0 || chunk > (size_t{1} << 30)) {
    error = "--chunk=" + std::to_string(chunk) + ": expected a multiple of 4096, at most 1g";
  }
  if (kaio_tools::Given(FLAGS_test_interrupt_after) && interrupt_after < 0) error = "--test_interrupt_after < 0";
  if (error.empty() && positional.size() != 2) error = "expected SRC and DST";
  if (!error.empty()) {
    std::fprintf(stderr, "tpc_copy: %s\n", error.c_str());
    return false;
  }
  options->threads = absl::GetFlag(FLAGS_threads);
  options->chunk = chunk;
  options->depth = absl::GetFlag(FLAGS_depth);
  options->direct = absl::GetFlag(FLAGS_direct);
  options->verify = !absl::GetFlag(FLAGS_no_verify);
  options->progress = absl::GetFlag(FLAGS_progress);
  options->test_interrupt_after = interrupt_after;
  options->src = positional[0];
  options->dst = positional[1];
  return true;
}

// State shared by the loops; written once before they start, except for the atomics.
struct Shared {
  const Options* options = nullptr;
  kaio::Service* service = nullptr;
  int src_fd = -1;
  int dst_fd = -1;
  uint64_t size = 0;
  int shutdown_fd = -1;  // eventfd: readable once anyone asked every loop to stop (never read)
  std::atomic<bool> failed{false};
  std::atomic<bool> interrupted{false};
  std::atomic<uint64_t> bytes_copied{0};
  std::atomic<uint64_t> bytes_verified{0};

  void StopAll() {
    uint64_t one = 1;
    // An eventfd write of 1 fails only if the counter would overflow, which two writes per loop cannot do.
    [[maybe_unused]] ssize_t n = write(shutdown_fd, &one, sizeof one);
  }
};

// One transfer: `need` bytes at `offset`, requested as `ask` bytes (rounded up to the O_DIRECT
// alignment on the file's last chunk; a read then comes back short at end of file).
struct Transfer {
  int fd = -1;
  bool write = false;
  char* buf = nullptr;
  int64_t offset = 0;
  size_t need = 0;
  size_t ask = 0;
  size_t done = 0;
  bool busy = false;
};

// One chunk's worth of work: copy = read A then write A; verify = read A (source) and B (copy) at once.
struct Slot {
  char* a = nullptr;
  char* b = nullptr;
  uint64_t chunk = 0;
  Transfer ops[2];
  bool active = false;
};

enum EpollTag : uint32_t { kNotify = 1, kShutdown = 2, kTimer = 3 };
enum class Phase { kCopy, kSync, kVerify, kDone };

class Loop {
 public:
  Loop(Shared& shared, int index, int cpu, uint64_t first_chunk, uint64_t end_chunk)
      : shared_(shared), options_(*shared.options), index_(index), cpu_(cpu),
        first_chunk_(first_chunk), end_chunk_(end_chunk), next_chunk_(first_chunk) {}

  ~Loop() {
    if (epoll_fd_ >= 0) close(epoll_fd_);
    if (timer_fd_ >= 0) close(timer_fd_);
    for (Slot& slot : slots_) {
      std::free(slot.a);
      std::free(slot.b);
    }
  }

  // The thread's body. Returns normally in every case; failures set shared_.failed.
  void Run() {
    Pin();
    if (!Setup()) {
      Fail();
      return;
    }
    Refill();
    struct epoll_event events[4];
    while (phase_ != Phase::kDone || outstanding_ > 0) {
      if (stopping_ && outstanding_ == 0) break;
      int n = epoll_wait(epoll_fd_, events, 4, -1);
      if (n < 0) {
        if (errno == EINTR) continue;
        Error("epoll_wait", errno);
        break;  // cannot wait any more; the destructor of the requester waits for what is left
      }
      for (int i = 0; i < n; ++i) {
        switch (events[i].data.u32) {
          case kNotify: Collect(); break;
          case kShutdown: Stop(); break;
          case kTimer: Tick(); break;
        }
      }
      Refill();
    }
    // Every request has been collected, so destroying the requester does not wait.
    requester_.reset();
  }

 private:
  void Pin() {
    if (cpu_ < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu_, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
      std::fprintf(stderr, "tpc_copy: loop %d: cannot pin to CPU %d (%s); running unpinned\n", index_, cpu_,
                   std::strerror(errno));
    }
  }

  bool Setup() {
    absl::StatusOr<std::unique_ptr<kaio::Requester>> requester = kaio::Requester::Create(*shared_.service);
    if (!requester.ok()) {
      std::fprintf(stderr, "tpc_copy: loop %d: %s\n", index_, requester.status().ToString().c_str());
      return false;
    }
    requester_ = *std::move(requester);

    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (epoll_fd_ < 0 || timer_fd_ < 0) {
      std::fprintf(stderr, "tpc_copy: loop %d: epoll/timerfd: %s\n", index_, std::strerror(errno));
      return false;
    }
    struct itimerspec tick = {{1, 0}, {1, 0}};
    timerfd_settime(timer_fd_, 0, &tick, nullptr);
    // NotifyFd() switches the requester to notify mode: from now on its fd is readable whenever a
    // completion may be waiting. Level-triggered epoll; we never read it ourselves, Poll() resets it.
    if (!Watch(requester_->NotifyFd(), kNotify) || !Watch(shared_.shutdown_fd, kShutdown) ||
        !Watch(timer_fd_, kTimer)) {
      std::fprintf(stderr, "tpc_copy: loop %d: epoll_ctl: %s\n", index_, std::strerror(errno));
      return false;
    }

    // Every buffer this loop will ever use, allocated once and aligned for O_DIRECT.
    slots_.resize(static_cast<size_t>(options_.depth));
    for (Slot& slot : slots_) {
      slot.a = static_cast<char*>(std::aligned_alloc(kAlign, options_.chunk));
      slot.b = options_.verify ? static_cast<char*>(std::aligned_alloc(kAlign, options_.chunk)) : nullptr;
      if (slot.a == nullptr || (options_.verify && slot.b == nullptr)) {
        std::fprintf(stderr, "tpc_copy: loop %d: out of memory for buffers\n", index_);
        return false;
      }
    }
    return true;
  }

  bool Watch(int fd, EpollTag tag) {
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u32 = tag;
    return epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) == 0;
  }

  // ---- Submitting.

  void Refill() {
    if (stopping_ || hold_) return;
    if (phase_ == Phase::kCopy || phase_ == Phase::kVerify) {
      for (size_t i = 0; i < slots_.size() && next_chunk_ < end_chunk_ && !stopping_; ++i) {
        if (!slots_[i].active) StartChunk(i, next_chunk_++);
      }
      if (next_chunk_ == end_chunk_ && ActiveSlots() == 0) NextPhase();
    }
  }

  void NextPhase() {
    if (phase_ == Phase::kCopy) {
      // The share is written: make it durable, through kaio too (Fdatasync is a request like any other).
      phase_ = Phase::kSync;
      absl::StatusOr<kaio::Ticket> ticket = requester_->Fdatasync(shared_.dst_fd, kSyncTag);
      if (!ticket.ok()) return Rejected(ticket.status());
      ++outstanding_;
    } else if (phase_ == Phase::kSync) {
      if (options_.verify) {
        phase_ = Phase::kVerify;
        next_chunk_ = first_chunk_;
        Refill();
      } else {
        phase_ = Phase::kDone;
      }
    } else if (phase_ == Phase::kVerify) {
      phase_ = Phase::kDone;
    }
  }

  void StartChunk(size_t index, uint64_t chunk) {
    Slot& slot = slots_[index];
    slot.active = true;
    slot.chunk = chunk;
    int64_t offset = static_cast<int64_t>(chunk * options_.chunk);
    size_t need = static_cast<size_t>(std::min<uint64_t>(options_.chunk, shared_.size - chunk * options_.chunk));
    // O_DIRECT wants aligned lengths: ask for whole blocks; the read comes back short at end of file.
    size_t ask = options_.direct ? (need + kAlign - 1) / kAlign * kAlign : need;
    slot.ops[0] = Transfer{shared_.src_fd, false, slot.a, offset, need, ask, 0, false};
    slot.ops[1] = Transfer{};
    if (phase_ == Phase::kVerify) slot.ops[1] = Transfer{shared_.dst_fd, false, slot.b, offset, need, ask, 0, false};
    for (int op = 0; op < 2; ++op) {
      if (slot.ops[op].fd >= 0) Submit(index, op);
    }
  }

  void Submit(size_t index, int op) {
    if (stopping_) return;
    Transfer& t = slots_[index].ops[op];
    uint64_t tag = index * 2 + static_cast<uint64_t>(op);
    absl::StatusOr<kaio::Ticket> ticket =
        t.write ? requester_->Write(t.fd, t.buf + t.done, t.ask - t.done, t.offset + static_cast<int64_t>(t.done), tag)
                : requester_->Read(t.fd, t.buf + t.done, t.ask - t.done, t.offset + static_cast<int64_t>(t.done), tag);
    if (!ticket.ok()) return Rejected(ticket.status());
    t.busy = true;
    ++outstanding_;
  }

  // ---- Completions.

  // The notify fd fired: take completions until Poll returns fewer than asked, which re-arms the fd.
  void Collect() {
    kaio::Completion batch[32];
    size_t n;
    do {
      n = requester_->Poll(absl::MakeSpan(batch));
      for (size_t i = 0; i < n; ++i) Handle(batch[i]);
    } while (n == std::size(batch));
  }

  void Handle(const kaio::Completion& c) {
    --outstanding_;
    last_progress_ = ticks_;
    if (c.tag == kSyncTag) {
      if (c.error() == ECANCELED && stopping_) return;  // cancelled by Stop() before it started
      if (!c.ok()) return Error("fdatasync of the copy", c.error());
      if (!stopping_) NextPhase();
      return;
    }
    size_t index = static_cast<size_t>(c.tag / 2);
    int op = static_cast<int>(c.tag % 2);
    Slot& slot = slots_[index];
    Transfer& t = slot.ops[op];
    t.busy = false;
    if (c.error() == ECANCELED) {  // cancelled by Stop(): drop the chunk
      Release(slot);
      return;
    }
    if (!c.ok()) {
      Error(t.write ? "write" : "read", c.error(), &t);
      Release(slot);
      return;
    }
    if (c.result == 0 && t.done < t.need) {
      Error(t.write ? "write (wrote nothing)" : "read (unexpected end of file: did the source shrink?)", 0, &t);
      Release(slot);
      return;
    }
    t.done += static_cast<size_t>(c.result);
    if (t.done < t.need) {  // a short transfer: ask for the rest
      if (!stopping_) Submit(index, op);
      if (!t.busy) Release(slot);
      return;
    }
    if (stopping_) {
      Release(slot);
      return;
    }
    if (phase_ == Phase::kCopy) {
      if (!t.write) {
        // Read done: write the chunk (all `ask` bytes under O_DIRECT; main truncates the tail off).
        if (t.ask > t.need) std::memset(t.buf + t.need, 0, t.ask - t.need);
        t = Transfer{shared_.dst_fd, true, slot.a, t.offset, t.ask, t.ask, 0, false};
        Submit(index, op);
        return;
      }
      shared_.bytes_copied.fetch_add(std::min(t.need, static_cast<size_t>(shared_.size - static_cast<uint64_t>(t.offset))),
                                     std::memory_order_relaxed);
      ++chunks_done_;
      if (index_ == 0 && chunks_done_ == options_.test_interrupt_after) {
        // Test hook: a real SIGINT, taken by the main thread's signalfd. This loop starts no more chunks
        // meanwhile, so the interrupt always lands in the middle of the copy.
        hold_ = true;
        kill(getpid(), SIGINT);
      }
      Release(slot);
      return;
    }
    // Verify: compare once both reads are in.
    if (slot.ops[0].busy || slot.ops[1].busy) return;
    if (std::memcmp(slot.a, slot.b, slot.ops[0].need) != 0) {
      size_t at = 0;
      while (slot.a[at] == slot.b[at]) ++at;
      std::fprintf(stderr, "tpc_copy: loop %d: the copy differs from the source at byte %" PRIu64 "\n", index_,
                   static_cast<uint64_t>(slot.ops[0].offset) + at);
      Fail();
    } else {
      shared_.bytes_verified.fetch_add(slot.ops[0].need, std::memory_order_relaxed);
    }
    Release(slot);
  }

  void Release(Slot& slot) {
    if (slot.ops[0].busy || slot.ops[1].busy) return;  // the other half is still out
    slot.active = false;
    if (!stopping_ && next_chunk_ == end_chunk_ && ActiveSlots() == 0) NextPhase();
  }

  size_t ActiveSlots() const {
    return static_cast<size_t>(std::count_if(slots_.begin(), slots_.end(), [](const Slot& s) { return s.active; }));
  }

  // ---- Stopping, errors, the timer.

  // Shutdown was asked for (a signal, or another loop failed): submit nothing more, cancel what kaio
  // still holds in its queue, and keep collecting until every outstanding request is back.
  void Stop() {
    if (stopping_) return;
    stopping_ = true;
    kaio::CancelResult src = requester_->CancelAll(shared_.src_fd);
    kaio::CancelResult dst = requester_->CancelAll(shared_.dst_fd);
    if (options_.progress) {
      std::fprintf(stderr, "tpc_copy: loop %d: stopping with %d requests out (cancel: %s)\n", index_, outstanding_,
                   src == kaio::CancelResult::kNotCanceled || dst == kaio::CancelResult::kNotCanceled
                       ? "some already running"
                       : "all queued ones cancelled");
    }
  }

  void Tick() {
    uint64_t expirations;
    if (read(timer_fd_, &expirations, sizeof expirations) != sizeof expirations) return;
    ticks_ += expirations;
    if (options_.progress) {
      std::fprintf(stderr, "tpc_copy: loop %d (cpu %d): phase %d, chunk %" PRIu64 " of [%" PRIu64 ", %" PRIu64
                   "), %d requests out\n", index_, cpu_, static_cast<int>(phase_), next_chunk_, first_chunk_,
                   end_chunk_, outstanding_);
    }
    if (outstanding_ > 0 && ticks_ - last_progress_ >= kStallSeconds && ticks_ - last_stall_report_ >= kStallSeconds) {
      last_stall_report_ = ticks_;
      kaio::ServiceStats stats = shared_.service->Stats();
      std::fprintf(stderr,
                   "tpc_copy: loop %d: no completion for %" PRIu64 " s with %d requests out (service: %" PRIu64
                   " in flight, %" PRIu64 " in the fallback pool)\n", index_, ticks_ - last_progress_, outstanding_,
                   stats.in_flight, stats.pool_running);
    }
  }

  void Rejected(const absl::Status& status) {
    std::fprintf(stderr, "tpc_copy: loop %d: kaio refused a request: %s\n", index_, status.ToString().c_str());
    Fail();
  }

  void Error(const char* what, int err, const Transfer* t = nullptr) {
    if (t != nullptr) {
      std::fprintf(stderr, "tpc_copy: loop %d: %s of %zu bytes at offset %" PRId64 " of %s: %s\n", index_, what,
                   t->ask - t->done, t->offset + static_cast<int64_t>(t->done),
                   t->fd == shared_.src_fd ? options_.src.c_str() : options_.dst.c_str(),
                   err != 0 ? std::strerror(err) : "no data");
    } else {
      std::fprintf(stderr, "tpc_copy: loop %d: %s: %s\n", index_, what, std::strerror(err));
    }
    Fail();
  }

  void Fail() {
    shared_.failed.store(true, std::memory_order_relaxed);
    shared_.StopAll();
    if (requester_ != nullptr) Stop();
    stopping_ = true;
  }

  static constexpr uint64_t kSyncTag = UINT64_MAX;
  static constexpr uint64_t kStallSeconds = 10;

  Shared& shared_;
  const Options& options_;
  const int index_;
  const int cpu_;
  const uint64_t first_chunk_, end_chunk_;
  uint64_t next_chunk_;
  Phase phase_ = Phase::kCopy;
  bool stopping_ = false;
  bool hold_ = false;  // --test_interrupt_after: waiting for the shutdown it asked for
  int outstanding_ = 0;  // submitted and not yet collected by Poll
  int64_t chunks_done_ = 0;
  uint64_t ticks_ = 0, last_progress_ = 0, last_stall_report_ = 0;
  std::unique_ptr<kaio::Requester> requester_;
  int epoll_fd_ = -1;
  int timer_fd_ = -1;
  std::vector<Slot> slots_;
};

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  return cpus;
}

int Main(int argc, char** argv) {
  Options options;
  if (!ParseArgs(argc, argv, &options)) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  Shared shared;
  shared.options = &options;
  int direct = options.direct ? O_DIRECT : 0;
  shared.src_fd = open(options.src.c_str(), O_RDONLY | O_CLOEXEC | direct);
  if (shared.src_fd < 0) {
    std::fprintf(stderr, "tpc_copy: cannot open %s: %s%s\n", options.src.c_str(), std::strerror(errno),
                 errno == EINVAL && options.direct ? " (does this filesystem support O_DIRECT?)" : "");
    return 1;
  }
  struct stat st;
  if (fstat(shared.src_fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    std::fprintf(stderr, "tpc_copy: %s is not a regular file\n", options.src.c_str());
    return 1;
  }
  shared.size = static_cast<uint64_t>(st.st_size);
  shared.dst_fd = open(options.dst.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC | direct, 0644);
  if (shared.dst_fd < 0) {
    std::fprintf(stderr, "tpc_copy: cannot create %s: %s%s\n", options.dst.c_str(), std::strerror(errno),
                 errno == EINVAL && options.direct ? " (does this filesystem support O_DIRECT?)" : "");
    return 1;
  }
  // Size the copy up front: the loops write their shares in any order.
  if (ftruncate(shared.dst_fd, static_cast<off_t>(shared.size)) != 0) {
    std::fprintf(stderr, "tpc_copy: cannot size %s: %s\n", options.dst.c_str(), std::strerror(errno));
    return 1;
  }

  // Under O_DIRECT, a write into blocks the filesystem has not allocated yet is refused under RWF_NOWAIT
  // (kaio then sends it again without NOWAIT: ServiceStats::nowait_retries). Allocating the whole copy
  // up front avoids that. Best effort: a filesystem without fallocate just takes the slower path.
  if (options.direct && shared.size > 0) {
    off_t blocks = static_cast<off_t>((shared.size + kAlign - 1) / kAlign * kAlign);
    (void)fallocate(shared.dst_fd, FALLOC_FL_KEEP_SIZE, 0, blocks);
  }

  // One loop per allowed CPU (or --threads), never more loops than chunks.
  std::vector<int> cpus = AllowedCpus();
  uint64_t chunks = (shared.size + options.chunk - 1) / options.chunk;
  int threads = options.threads > 0 ? options.threads : std::max<int>(1, static_cast<int>(cpus.size()));
  threads = static_cast<int>(std::max<uint64_t>(1, std::min<uint64_t>(static_cast<uint64_t>(threads), chunks)));

  // Signals: blocked in every thread and taken by the main thread from a signalfd, which turns them into
  // a write to the shutdown eventfd that every loop watches. Block them before Service::Create: kaio's
  // threads (submitter, reaper, fallback pool) inherit the creating thread's mask, and a process-directed
  // SIGINT delivered to one of them would take the default action and kill the process.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // kaio's queue depth: enough for every loop's window, so no loop waits on another's requests.
  kaio::ServiceOptions service_options;
  service_options.queue_depth = std::max(128, threads * options.depth * 2);
  absl::StatusOr<std::unique_ptr<kaio::Service>> service = kaio::Service::Create(service_options);
  if (!service.ok()) {
    std::fprintf(stderr, "tpc_copy: %s\n", service.status().ToString().c_str());
    return 1;
  }
  shared.service = service->get();

  int signal_fd = signalfd(-1, &signals, SFD_CLOEXEC);
  shared.shutdown_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int done_fd = eventfd(0, EFD_CLOEXEC);  // each loop adds 1 when it returns
  if (signal_fd < 0 || shared.shutdown_fd < 0 || done_fd < 0) {
    std::fprintf(stderr, "tpc_copy: signalfd/eventfd: %s\n", std::strerror(errno));
    return 1;
  }

  const int64_t start_ns = kaio_tools::NowNs();
  std::vector<std::unique_ptr<Loop>> loops;
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    uint64_t first = chunks * static_cast<uint64_t>(i) / static_cast<uint64_t>(threads);
    uint64_t end = chunks * static_cast<uint64_t>(i + 1) / static_cast<uint64_t>(threads);
    int cpu = cpus.empty() ? -1 : cpus[static_cast<size_t>(i) % cpus.size()];
    loops.push_back(std::make_unique<Loop>(shared, i, cpu, first, end));
    workers.emplace_back([&loop = *loops.back(), done_fd] {
      loop.Run();
      uint64_t one = 1;
      [[maybe_unused]] ssize_t n = write(done_fd, &one, sizeof one);
    });
  }

  // The main thread waits for the loops to finish or a signal, whichever comes first.
  uint64_t finished = 0;
  while (finished < static_cast<uint64_t>(threads)) {
    struct pollfd fds[2] = {{signal_fd, POLLIN, 0}, {done_fd, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) continue;
    if (fds[0].revents & POLLIN) {
      struct signalfd_siginfo info;
      if (read(signal_fd, &info, sizeof info) == sizeof info) {
        std::fprintf(stderr, "tpc_copy: %s: stopping\n", strsignal(static_cast<int>(info.ssi_signo)));
        shared.interrupted.store(true, std::memory_order_relaxed);
        shared.StopAll();
      }
    }
    if (fds[1].revents & POLLIN) {
      uint64_t count;
      if (read(done_fd, &count, sizeof count) == sizeof count) finished += count;
    }
  }
  for (std::thread& worker : workers) worker.join();
  double seconds = static_cast<double>(kaio_tools::NowNs() - start_ns) * 1e-9;
  kaio::ServiceStats stats = shared.service->Stats();
  loops.clear();
  service->reset();  // every requester is gone

  bool ok = !shared.failed.load() && !shared.interrupted.load();
  // O_DIRECT wrote whole blocks: cut the copy back to the source's size.
  if (ftruncate(shared.dst_fd, static_cast<off_t>(shared.size)) != 0 && ok) {
    std::fprintf(stderr, "tpc_copy: cannot truncate %s: %s\n", options.dst.c_str(), std::strerror(errno));
    ok = false;
  }
  close(shared.src_fd);
  close(shared.dst_fd);
  uint64_t copied = shared.bytes_copied.load();
  std::fprintf(stderr,
               "tpc_copy: %s %" PRIu64 " of %" PRIu64 " bytes with %d loop%s in %.3f s (%.1f MiB/s)%s; kaio: %" PRIu64
               " requests, %" PRIu64 " io_submit calls (%.1f per call), %" PRIu64 " in the fallback pool, %" PRIu64
               " RWF_NOWAIT refusals\n",
               ok ? "copied" : "stopped after", copied, shared.size, threads, threads == 1 ? "" : "s", seconds,
               static_cast<double>(copied) / (1 << 20) / std::max(seconds, 1e-9),
               ok && options.verify ? ", verified" : "", stats.requests_completed, stats.io_submit_calls,
               stats.average_batch, stats.pool_requests, stats.nowait_retries);
  if (shared.interrupted.load() && !shared.failed.load()) return 130;
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
