// A fuzz target that drives random sequences of kaio API calls: up to three Requesters on one thread
// submitting reads, writes, vectored I/O and syncs on an O_DIRECT file, a buffered file, a pipe,
// /dev/null and bad fds (with valid and invalid arguments), and polling, waiting, cancelling and
// asking about live, consumed, foreign and forged tickets, with faults injected through the syscall
// seam. Run with libFuzzer under ASan (scripts/fuzz_smoke.sh), or by fuzz/standalone_main.cc over a
// corpus and random inputs with any toolchain and sanitizer.
//
// What it checks, besides "no crash, no sanitizer report": every submission's status is the one the
// API promises for its arguments; every completion answers a live ticket of the requester that got it,
// once, with its tag and a result no larger than the request; stale and forged tickets are EINVAL
// (never another request's answer); Cancel's answer agrees with the result; and after each input,
// with every requester gone, the service's counters balance and every slot of the slab is free.
// A violation prints what happened and aborts, so libFuzzer saves the input.
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/slot.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "runtime/engine.h"
#include "runtime/service_access.h"
#include "tests/fault_syscalls.h"

namespace kaio::fuzz {
namespace {

// The last steps of the current input, printed with a violation (the harness is single-threaded).
std::deque<std::string>& TraceLog() {
  static std::deque<std::string> log;
  return log;
}
void Trace(const char* format, ...) __attribute__((format(printf, 1, 2)));
void Trace(const char* format, ...) {
  char text[200];
  va_list args;
  va_start(args, format);
  std::vsnprintf(text, sizeof(text), format, args);
  va_end(args);
  TraceLog().push_back(text);
  if (TraceLog().size() > 80) TraceLog().pop_front();
}

[[noreturn]] void Violation(const char* what, uint64_t a = 0, int64_t b = 0) {
  for (const std::string& line : TraceLog()) std::fprintf(stderr, "  trace: %s\n", line.c_str());
  std::fprintf(stderr, "kaio_api_fuzzer: VIOLATION: %s (%llu, %lld)\n", what, static_cast<unsigned long long>(a),
               static_cast<long long>(b));
  std::fflush(stderr);
  std::abort();
}

class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint32_t U16() { return U8() | (uint32_t{U8()} << 8); }
  uint64_t U64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{U8()} << (8 * i);
    return v;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

constexpr size_t kBufSize = 8192;
constexpr int kBuffers = 32;
constexpr int kRequesters = 3;
constexpr int kFileSize = 64 * 1024;
constexpr int kMaxIov = 8;
constexpr std::array<struct iovec, kMaxIov> kEmptyIov{};  // never written: shared by requests

// Process-wide: the services (kept across inputs, so each input costs no io_setup/io_destroy), the files.
struct Env {
  testing::FaultSyscalls sys;
  std::vector<std::unique_ptr<Service>> services;
  int direct_fd = -1, buffered_fd = -1, pipe_read = -1, pipe_write = -1, null_fd = -1;
  std::array<uint8_t*, kBuffers> buffers{};

  Env() {
    const char* tmp = getenv("TEST_TMPDIR");
    std::string dir = tmp != nullptr ? tmp : "/tmp";
    direct_fd = OpenTemp(dir, O_DIRECT);
    if (direct_fd < 0) direct_fd = OpenTemp(dir, 0);  // a filesystem without O_DIRECT
    buffered_fd = OpenTemp(dir, 0);
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) std::abort();
    pipe_read = p[0];
    pipe_write = p[1];
    fcntl(pipe_write, F_SETFL, O_NONBLOCK);  // kaio's writes and ours never block; reads may (the pool's job)
    null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (auto& b : buffers) {
      void* p2 = nullptr;
      if (posix_memalign(&p2, 4096, kBufSize) != 0) std::abort();
      std::memset(p2, 0, kBufSize);
      b = static_cast<uint8_t*>(p2);
    }
    ServiceOptions a;  // defaults
    ServiceOptions b;  // a kernel queue of one, no pool (requests that would block, block the submitter)
    b.queue_depth = 1;
    b.submit_batch = 1;
    b.reap_batch = 1;
    b.fallback_threads = 0;
    b.max_requests = 1024;
    ServiceOptions c;  // one pool thread, the io context released after 1 ms idle
    c.queue_depth = 4;
    c.fallback_threads = 1;
    c.idle_release = absl::Milliseconds(1);
    for (const ServiceOptions& o : {a, b, c}) {
      auto s = runtime::ServiceAccess::CreateWithSyscalls(o, &sys);
      if (!s.ok()) {
        std::fprintf(stderr, "kaio_api_fuzzer: %s\n", s.status().ToString().c_str());
        std::abort();
      }
      services.push_back(*std::move(s));
    }
  }

  static int OpenTemp(const std::string& dir, int flags) {
    std::string path = dir + "/kaio_fuzz_XXXXXX";
    int fd = mkstemp(path.data());
    if (fd < 0) std::abort();
    std::vector<uint8_t> data(kFileSize);
    for (int i = 0; i < kFileSize; ++i) data[i] = static_cast<uint8_t>(i * 7 + 3);
    if (pwrite(fd, data.data(), data.size(), 0) != kFileSize) std::abort();
    close(fd);
    int reopened = open(path.c_str(), O_RDWR | O_CLOEXEC | flags);
    unlink(path.c_str());
    return reopened;
  }

  // Empties the pipe without blocking, so one input's leftovers do not feed the next.
  void DrainPipe() {
    int available = 0;
    char sink[4096];
    while (ioctl(pipe_read, FIONREAD, &available) == 0 && available > 0) {
      if (read(pipe_read, sink, std::min<size_t>(sizeof(sink), static_cast<size_t>(available))) <= 0) break;
    }
  }
};

Env& GetEnv() {
  static Env* env = new Env();  // never destroyed: services outlive every input
  return *env;
}

struct Live {
  uint64_t tag = 0;
  int64_t max_result = 0;  // the most bytes the request may transfer
  int buffer = -1;         // arena buffer it holds until consumed, or -1
  bool pipe_read = false;  // may block until the pipe is fed
  bool said_canceled = false, said_not_canceled = false;
};

struct Slot {
  std::unique_ptr<Requester> requester;
  std::map<Ticket, Live> live;  // ticket -> request
  std::vector<Ticket> consumed;  // recent consumed tickets
};

class Run {
 public:
  Run(Env& env, Bytes& in) : env_(env), in_(in) {
    service_ = env_.services[in_.U8() % env_.services.size()].get();
    uint8_t f = in_.U8();
    testing::RandomFaultRates rates;
    if (f >= 128) {
      int pm = 1 + (f & 0x3f) * 4;  // up to ~25%
      rates.submit_eagain = (f & 1) ? pm : 0;
      rates.submit_partial = pm;
      rates.submit_ebadf = pm / 2;
      rates.getevents_eintr = pm;
      rates.eventfd_read_eio = (f & 2) ? pm / 4 : 0;
      rates.setup_eagain = pm / 2;
      rates.getevents_short = pm;
    }
    env_.sys.SetRandomFaults(in_.U64(), rates);
    before_ = service_->Stats();
    buffer_busy_.fill(false);
  }

  void Go() {
    TraceLog().clear();
    for (int step = 0; step < 256 && !in_.empty(); ++step) Step();
    Finish();
  }

 private:
  Slot& PickSlot() { return slots_[in_.U8() % kRequesters]; }

  int PickFd(bool* regular) {
    *regular = false;
    switch (in_.U8() % 8) {
      case 0:
      case 1:
        *regular = true;
        return env_.direct_fd;
      case 2:
      case 3:
        *regular = true;
        return env_.buffered_fd;
      case 4:
        return env_.pipe_read;
      case 5:
        return env_.pipe_write;
      case 6:
        return env_.null_fd;
      default:
        return (in_.U8() & 1) ? -1 - static_cast<int>(in_.U8()) : (1 << 20);  // negative, or not open
    }
  }

  int64_t PickOffset() {
    switch (in_.U8() % 6) {
      case 0: return 0;
      case 1: return static_cast<int64_t>(in_.U8()) * 512;
      case 2: return static_cast<int64_t>(in_.U16());
      case 3: return kFileSize - 512;
      case 4: return -static_cast<int64_t>(in_.U8()) - 1;
      default: return INT64_MAX - static_cast<int64_t>(in_.U8());
    }
  }

  size_t PickLength() {
    switch (in_.U8() % 5) {
      case 0: return 0;
      case 1: return 512 * (1 + in_.U8() % 16);
      case 2: return 1 + in_.U8() % 64;
      case 3: return kBufSize;
      default: return in_.U16() % (kBufSize + 1);
    }
  }

  int TakeBuffer() {
    for (int i = 0; i < kBuffers; ++i) {
      if (!buffer_busy_[i]) {
        buffer_busy_[i] = true;
        return i;
      }
    }
    return -1;
  }

  // Ticket choices for Error/Return/Cancel/waits: live, consumed, another requester's, forged, empty.
  Ticket PickTicket(Slot& s) {
    switch (in_.U8() % 6) {
      case 0:
      case 1:
        if (!s.live.empty()) {
          auto it = s.live.begin();
          std::advance(it, in_.U8() % s.live.size());
          return it->first;
        }
        return Ticket();
      case 2:
        return s.consumed.empty() ? Ticket() : s.consumed[in_.U8() % s.consumed.size()];
      case 3: {
        Slot& other = PickSlot();
        return other.live.empty() ? Ticket() : other.live.begin()->first;
      }
      case 4:
        // Forged: a real slot and generation with a made-up serial, or small numbers throughout.
        if (in_.U8() & 1) {
          Slot& any = PickSlot();
          if (!any.live.empty()) return Ticket(any.live.begin()->first.slot(), in_.U64() | 1);
        }
        return Ticket((uint64_t{in_.U8()} << 32) | in_.U8(), in_.U8());
      default:
        return Ticket(in_.U64(), in_.U64());
    }
  }

  // Whether Return() just consumed `t` (a ticket our model holds live). Return() answers -EINVAL and
  // -EINPROGRESS both for tickets it does not consume and as the results of requests that failed
  // with those errnos, so the slot itself says which it was (nothing else claims slots meanwhile:
  // this harness is the only producer).
  bool Consumed(Ticket t) {
    const core::Slot& slot = runtime::ServiceAccess::EngineOf(*service_).slots().at(core::TicketIndex(t.slot()));
    uint64_t word = slot.word.load(std::memory_order_acquire);
    core::SlotState state = core::WordState(word);
    return core::WordGeneration(word) != core::TicketGeneration(t.slot()) || state == core::SlotState::kFree ||
           state == core::SlotState::kReturned;
  }

  bool IsLiveAnywhere(Ticket t) const {
    for (const Slot& s : slots_) {
      if (s.live.count(t)) return true;
    }
    return false;
  }

  void Submit(Slot& s, int kind) {
    bool regular = false;
    int fd = PickFd(&regular);
    int64_t offset = PickOffset();
    size_t length = PickLength();
    const bool null_buf = (in_.U8() & 15) == 0;
    int buffer = -1;
    if (!null_buf && kind <= 3) {
      buffer = TakeBuffer();
      if (buffer < 0) return;
    }
    uint8_t* buf = buffer >= 0 ? env_.buffers[buffer] : nullptr;
    bool pipe_read = fd == env_.pipe_read;
    if (pipe_read && length > 64) length = 64;  // reads that block until fed: keep them small
    // A request's iovec array must stay put until it is answered: each arena buffer has its own, and
    // requests without a buffer use a constant array of empty segments (or a scratch array when the
    // submission must be refused anyway).
    std::array<struct iovec, kMaxIov>& iov = buffer >= 0 ? iovs_[buffer] : scratch_iov_;
    int iovcnt = 0;
    uint64_t total = length;
    bool expect_ok = fd >= 0 && (buf != nullptr || length == 0);
    absl::StatusOr<Ticket> t;
    const uint64_t tag = ++tag_serial_;
    switch (kind) {
      case 0:
      case 1:
        if (offset < 0 || static_cast<uint64_t>(offset) > static_cast<uint64_t>(INT64_MAX) - length) expect_ok = false;
        t = kind == 0 ? s.requester->Read(fd, buf, length, offset, tag) : s.requester->Write(fd, buf, length, offset, tag);
        break;
      case 2:
      case 3: {
        uint8_t c = in_.U8();
        iovcnt = c < 200 ? c % (kMaxIov + 1) : (c & 1) ? -1 : IOV_MAX + 1;
        total = 0;
        size_t used = 0;
        const bool empty_segments = buf == nullptr && (in_.U8() & 1);
        for (int i = 0; i < std::min(iovcnt, kMaxIov); ++i) {
          size_t len = empty_segments ? 0 : std::min<size_t>(in_.U16() % 2048, kBufSize - used);
          if (pipe_read) len = std::min<size_t>(len, 16);
          iov[i].iov_base = buf != nullptr ? buf + used : nullptr;
          iov[i].iov_len = len;
          used += len;
          total += len;
        }
        expect_ok = !(iovcnt < 0 || iovcnt > IOV_MAX || fd < 0) && !(buf == nullptr && total > 0);
        const struct iovec* array = iov.data();
        if (buf == nullptr && total == 0) array = kEmptyIov.data();
        if (iovcnt > 0 && buf == nullptr && (in_.U8() & 3) == 0) {
          array = nullptr;  // a null iovec array with a count
          expect_ok = false;
        }
        if (offset < 0 || static_cast<uint64_t>(offset) > static_cast<uint64_t>(INT64_MAX) - total) expect_ok = false;
        t = kind == 2 ? s.requester->Readv(fd, array, iovcnt, offset, tag) : s.requester->Writev(fd, array, iovcnt, offset, tag);
        break;
      }
      default:
        expect_ok = fd >= 0;
        total = 0;
        t = (kind == 4) ? s.requester->Fsync(fd, tag) : s.requester->Fdatasync(fd, tag);
        break;
    }
    if (t.ok() != expect_ok) {
      std::fprintf(stderr, "kind %d fd %d offset %lld length %zu iovcnt %d buf %p: %s\n", kind, fd,
                   static_cast<long long>(offset), length, iovcnt, static_cast<void*>(buf), t.status().ToString().c_str());
      Violation("submission status disagrees with the API contract", static_cast<uint64_t>(kind), expect_ok);
    }
    if (!t.ok()) {
      if (t.status().code() != absl::StatusCode::kInvalidArgument) Violation("submission refused with a status other than INVALID_ARGUMENT");
      if (buffer >= 0) buffer_busy_[buffer] = false;
      return;
    }
    if (!t->valid() || IsLiveAnywhere(*t)) Violation("a new ticket is empty or already live", t->serial());
    Trace("r%d submit kind %d fd %d len %zu -> %016llx", static_cast<int>(&s - slots_.data()), kind, fd, length,
          static_cast<unsigned long long>(t->serial()));
    Live l;
    l.tag = tag;
    l.max_result = static_cast<int64_t>(kind <= 1 ? length : total);
    l.buffer = buffer;
    l.pipe_read = pipe_read;
    s.live[*t] = l;
  }

  void CheckResult(Slot& s, Ticket t, const Live& l, int64_t result) {
    const uint64_t ticket = t.serial();
    if (result > l.max_result) Violation("result larger than the request", ticket, result);
    if (result < -4095) Violation("result is not a byte count or -errno", ticket, result);
    if (l.said_canceled && result != -ECANCELED) Violation("Cancel said kCanceled but the result is not ECANCELED", ticket, result);
    if (l.said_not_canceled && result == -ECANCELED) Violation("Cancel said kNotCanceled but the result is ECANCELED", ticket, result);
    if (result == -EINPROGRESS) Violation("a consumed result is EINPROGRESS", ticket, result);
    if (l.buffer >= 0) buffer_busy_[l.buffer] = false;
    s.consumed.push_back(t);
    if (s.consumed.size() > 64) s.consumed.erase(s.consumed.begin());
    ++answered_;
  }

  void Take(Slot& s, absl::Span<const Completion> done) {
    for (const Completion& c : done) {
      Trace("r%d completion %016llx result %lld", static_cast<int>(&s - slots_.data()),
            static_cast<unsigned long long>(c.ticket.serial()), static_cast<long long>(c.result));
      auto it = s.live.find(c.ticket);
      if (it == s.live.end()) Violation("completion for a ticket that is not live here (delivered twice or misrouted)", c.ticket.serial(), c.result);
      if (it->second.tag != c.tag) Violation("completion carries another request's tag", c.tag, static_cast<int64_t>(it->second.tag));
      Live l = it->second;
      s.live.erase(it);
      CheckResult(s, c.ticket, l, c.result);
    }
  }

  void Step() {
    Slot& s = PickSlot();
    uint8_t op = in_.U8() % 16;
    if (s.requester == nullptr) {
      RequesterOptions options;
      options.inline_io = (op & 1) != 0;  // half the requesters submit and reap on this thread
      auto r = Requester::Create(*service_, options);
      if (!r.ok()) Violation("Requester::Create failed");
      s.requester = *std::move(r);
      Trace("r%d created%s", static_cast<int>(&s - slots_.data()), options.inline_io ? " (inline_io)" : "");
      return;
    }
    Requester& r = *s.requester;
    switch (op) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
      case 5:
        Submit(s, op);
        return;
      case 6: {
        std::array<Completion, 8> out;
        size_t n = r.Poll(absl::MakeSpan(out.data(), 1 + in_.U8() % out.size()));
        Take(s, absl::MakeConstSpan(out.data(), n));
        return;
      }
      case 7: {
        std::array<Completion, 8> out;
        size_t want = 1 + in_.U8() % out.size();
        size_t n = r.Wait(absl::MakeSpan(out.data(), want), in_.U8() % (want + 1), absl::Microseconds(in_.U8() * 4));
        Take(s, absl::MakeConstSpan(out.data(), n));
        return;
      }
      case 8:
      case 9: {
        std::vector<Ticket> list;
        bool all_own_live = true;
        for (int i = in_.U8() % 5; i > 0; --i) {
          Ticket t = PickTicket(s);
          if (!s.live.count(t)) all_own_live = false;
          list.push_back(t);
        }
        absl::Duration timeout = absl::Microseconds(in_.U8() * 4);
        if (op == 8) {
          absl::Status st = r.WaitAll(list, timeout);
          if (!all_own_live && st.code() != absl::StatusCode::kInvalidArgument) Violation("WaitAll over a stale or foreign ticket is not INVALID_ARGUMENT");
          if (all_own_live && !st.ok() && st.code() != absl::StatusCode::kDeadlineExceeded) Violation("WaitAll over live tickets failed");
          if (st.ok()) {
            for (Ticket t : list) {
              if (r.Error(t) == EINPROGRESS) Violation("WaitAll returned, yet a ticket is in progress", t.serial());
            }
          }
        } else {
          absl::StatusOr<size_t> i = r.WaitAny(list, timeout);
          if ((!all_own_live || list.empty()) && i.status().code() != absl::StatusCode::kInvalidArgument) Violation("WaitAny over a stale, foreign or empty list is not INVALID_ARGUMENT");
          if (i.ok() && (*i >= list.size() || r.Error(list[*i]) == EINPROGRESS)) Violation("WaitAny named an unfinished request");
        }
        return;
      }
      case 10: {
        Ticket t = PickTicket(s);
        int e = r.Error(t);
        if (!s.live.count(t) && e != EINVAL) Violation("Error() of a ticket not live here is not EINVAL", t.serial(), e);
        if (e < 0) Violation("Error() returned a negative value", t.serial(), e);
        return;
      }
      case 11: {
        Ticket t = PickTicket(s);
        int64_t result = r.Return(t);
        Trace("r%d Return %016llx -> %lld", static_cast<int>(&s - slots_.data()), static_cast<unsigned long long>(t.serial()),
              static_cast<long long>(result));
        auto it = s.live.find(t);
        if (it == s.live.end()) {
          if (result != -EINVAL) Violation("Return() of a ticket that is not live here is not EINVAL", t.serial(), result);
          return;
        }
        if (!Consumed(t)) {
          if (result != -EINPROGRESS) Violation("Return() answered a live ticket without consuming it", t.serial(), result);
          return;
        }
        Live l = it->second;
        s.live.erase(it);
        CheckResult(s, t, l, result);
        return;
      }
      case 12: {
        Ticket t = PickTicket(s);
        absl::StatusOr<CancelResult> c = r.Cancel(t);
        Trace("r%d Cancel %016llx -> %d", static_cast<int>(&s - slots_.data()),
              static_cast<unsigned long long>(t.serial()), c.ok() ? static_cast<int>(*c) : -1);
        auto it = s.live.find(t);
        if (it == s.live.end()) {
          // Dead, forged, or another requester's: Cancel checks the owner, as Return does.
          if (c.ok() || c.status().code() != absl::StatusCode::kInvalidArgument) {
            Violation("Cancel of a ticket not live here is not INVALID_ARGUMENT", t.serial());
          }
          return;
        }
        if (!c.ok()) Violation("Cancel of a live ticket failed", t.serial());
        if (*c == CancelResult::kCanceled) {
          it->second.said_canceled = true;
          it->second.said_not_canceled = false;
          if (r.Error(t) != ECANCELED) Violation("Cancel said kCanceled but Error() is not ECANCELED", t.serial());
        } else if (*c == CancelResult::kNotCanceled) {
          if (it->second.said_canceled) Violation("Cancel said kNotCanceled after kCanceled", t.serial());
          it->second.said_not_canceled = true;
        } else if (r.Error(t) == EINPROGRESS) {
          Violation("Cancel said kAllDone but Error() is EINPROGRESS", t.serial());
        }
        return;
      }
      case 13: {
        bool regular;
        int fd = PickFd(&regular);
        CancelResult c = r.CancelAll(fd);
        Trace("r%d CancelAll fd %d -> %d", static_cast<int>(&s - slots_.data()), fd, static_cast<int>(c));
        // Requests it cancelled show ECANCELED now; a later result must agree with that.
        for (auto& [t, l] : s.live) {
          if (r.Error(t) == ECANCELED) {
            l.said_canceled = true;
            l.said_not_canceled = false;
          }
        }
        (void)c;
        return;
      }
      case 14: {
        r.Flush();  // what an inline_io loop does before it waits on the notify fd (no-op otherwise)
        int fd = r.NotifyFd();
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 0) < 0) Violation("poll on the notify fd failed");
        std::array<Completion, 8> out;
        size_t n;
        do {
          n = r.Poll(absl::MakeSpan(out));
          Take(s, absl::MakeConstSpan(out.data(), n));
        } while (n == out.size());
        return;
      }
      default: {
        if (in_.U8() & 1) {
          // Requesters come and go: destroy it, with its requests answered first or still outstanding
          // (the destructor must wait for them). Pipe readers are fed enough first.
          if (in_.U8() & 1) {
            Unstick(s);
          } else {
            // Every pipe read outstanding, this requester's and the others' (they all read the same
            // pipe, and may take the bytes meant for ours), gets enough for its largest read (128).
            size_t pipe_reads = 0;
            for (const Slot& any : slots_) {
              for (const auto& [t, l] : any.live) pipe_reads += l.pipe_read ? 1 : 0;
            }
            std::vector<char> bytes(128 * pipe_reads, 'a');
            if (!bytes.empty()) {
              ssize_t w = write(env_.pipe_write, bytes.data(), bytes.size());  // EAGAIN: full, so readers have data
              (void)w;
            }
            abandoned_ += s.live.size();
          }
          Trace("r%d destroyed with %zu outstanding", static_cast<int>(&s - slots_.data()), s.live.size());
          Forget(s);
          s.requester.reset();
        } else {
          char bytes[64];
          std::memset(bytes, 'p', sizeof(bytes));
          ssize_t w = write(env_.pipe_write, bytes, 1 + in_.U8() % sizeof(bytes));  // feed pipe readers
          (void)w;
        }
        uint64_t f = s.requester ? s.requester->in_flight() : 0;
        if (f > (uint64_t{1} << 62)) Violation("in_flight() wrapped: more deliveries than requests", f);
        return;
      }
    }
  }

  // Makes sure nothing of this requester's can block forever: feeds the pipe until every request is
  // back. Bounded: a request that never completes is a lost completion.
  void Unstick(Slot& s) {
    if (s.requester == nullptr) return;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    std::array<Completion, 16> out;
    while (!s.live.empty()) {
      char bytes[64];
      std::memset(bytes, 'u', sizeof(bytes));
      ssize_t w = write(env_.pipe_write, bytes, sizeof(bytes));
      (void)w;
      size_t n = s.requester->Wait(absl::MakeSpan(out), 1, absl::Milliseconds(2));
      Take(s, absl::MakeConstSpan(out.data(), n));
      if (n == 0) {
        // Results taken by Return() never come through Wait: find them.
        for (auto it = s.live.begin(); it != s.live.end();) {
          int64_t result = s.requester->Return(it->first);
          Trace("r%d unstick Return %016llx -> %lld", static_cast<int>(&s - slots_.data()),
                static_cast<unsigned long long>(it->first.serial()), static_cast<long long>(result));
          if (!Consumed(it->first)) {
            if (result != -EINPROGRESS) Violation("Return() answered a live ticket without consuming it", it->first.serial(), result);
            ++it;
            continue;
          }
          Live l = it->second;
          Ticket t = it->first;
          it = s.live.erase(it);
          CheckResult(s, t, l, result);
        }
      }
      if (std::chrono::steady_clock::now() > deadline) Violation("requests never completed (lost completion or hang)", s.live.size());
    }
  }

  void Forget(Slot& s) {
    for (auto& [t, l] : s.live) {
      if (l.buffer >= 0) buffer_busy_[l.buffer] = false;
    }
    s.live.clear();
    s.consumed.clear();
  }

  void Finish() {
    for (Slot& s : slots_) {
      Unstick(s);
      Forget(s);
      s.requester.reset();
    }
    env_.sys.SetRandomFaults(0, {});
    env_.DrainPipe();
    ServiceStats st = service_->Stats();
    if (st.requests_completed != st.requests_accepted) Violation("completed != accepted with every requester gone", st.requests_completed, static_cast<int64_t>(st.requests_accepted));
    if (st.in_flight != 0) Violation("requests in flight with every requester gone", st.in_flight);
    if (st.requests_accepted - before_.requests_accepted != answered_ + abandoned_) {
      Violation("requests accepted in this input != requests answered + abandoned", st.requests_accepted - before_.requests_accepted, static_cast<int64_t>(answered_ + abandoned_));
    }
    core::SlotTable& slots = runtime::ServiceAccess::EngineOf(*service_).slots();
    for (uint32_t i = 0; i < slots.allocated(); ++i) {
      if (core::WordState(slots.at(i).word.load(std::memory_order_acquire)) != core::SlotState::kFree) Violation("a slot leaked", i);
    }
  }

  Env& env_;
  Bytes& in_;
  Service* service_ = nullptr;
  ServiceStats before_;
  std::array<Slot, kRequesters> slots_;
  std::array<bool, kBuffers> buffer_busy_{};
  std::array<std::array<struct iovec, kMaxIov>, kBuffers> iovs_{};
  std::array<struct iovec, kMaxIov> scratch_iov_{};
  uint64_t tag_serial_ = 0;
  uint64_t answered_ = 0;
  uint64_t abandoned_ = 0;
};

}  // namespace
}  // namespace kaio::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kaio::fuzz::Env& env = kaio::fuzz::GetEnv();
  kaio::fuzz::Bytes in(data, size);
  kaio::fuzz::Run run(env, in);
  run.Go();
  return 0;
}
