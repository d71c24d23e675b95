// POSIX AIO on kaio's engine. See kaio/posix.h for the semantics; this file is the machinery.
//
// Shape
//   - One process-wide State (a kaio Service with its own CompletionSink), created on the first
//     submission and never destroyed (requests may be in flight at exit; their buffers are the
//     program's). fork() children start their own on their first submission.
//   - A request is an engine slot plus a Record, a parallel table indexed by slot, holding what the
//     POSIX layer needs at completion (the aiocb, its sigevent, its lio_listio group) and the atomics
//     other threads may read at any time (fd, kind, state). The aiocb itself carries the results in
//     glibc's own fields (__error_code, __return_value) plus two words of kaio's in __glibc_reserved:
//     the ticket of its current slot (for aio_cancel) and an owner word (a magic number and the pid).
//   - Completion: the engine calls Sink::Deliver once per slot, on whichever thread finished it. It
//     publishes the result into the aiocb (return value, then the error code with a seq_cst store),
//     frees the slot, wakes aio_suspend / lio_listio(LIO_WAIT) waiters through one global futex,
//     then sends the sigevent (SIGEV_THREAD callbacks run on kaio's notification threads).
//   - aio_cancel races Deliver for a request the engine reports cancelled: whoever wins a CAS on the
//     record's state publishes ECANCELED; the slot is freed by whichever of the two finishes last.
//   - The orderer holds back writes to O_APPEND fds (one at a time per fd, in call order) and
//     aio_fsync (until every write queued before it on that fd completed), without blocking callers.
//   - Short kernel results the caller would not get from a blocking call (a RWF_NOWAIT write that
//     wrote part, a RWF_NOWAIT read of a regular file that stopped at an uncached page) are finished
//     by a continuation request run in the blocking pool; the aiocb stays in progress until the end.
//
// Memory ordering: the engine's slot transitions order a submission before its Deliver. Results go
// to the aiocb with a seq_cst store of __error_code; readers (aio_error, aio_suspend) load it
// acquire/seq_cst, so the return value and the data written by a worker thread are visible after.
// Waiters and wakers meet on one futex word, g_completion_word (below).
#include "kaio/posix.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/slot.h"
#include "kaio/service.h"
#include "runtime/engine.h"

namespace kaio::posix {
namespace {

using core::SlotState;
using core::WordGeneration;

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

// ---------------------------------------------------------------- the aiocb's fields

// On LP64 glibc, struct aiocb and struct aiocb64 are the same layout, so one implementation serves
// both names. kaio keeps two words in __glibc_reserved (32 bytes, 8-aligned).
static_assert(sizeof(struct aiocb) == sizeof(struct aiocb64));
static_assert(offsetof(struct aiocb, aio_offset) == offsetof(struct aiocb64, aio_offset));
static_assert(offsetof(struct aiocb, __error_code) == offsetof(struct aiocb64, __error_code));
static_assert(offsetof(struct aiocb, __glibc_reserved) == offsetof(struct aiocb64, __glibc_reserved));
static_assert(sizeof(static_cast<struct aiocb*>(nullptr)->__glibc_reserved) >= 16);
static_assert(offsetof(struct aiocb, __glibc_reserved) % 8 == 0);

typedef uint64_t __attribute__((may_alias)) AliasedWord;

AliasedWord* MetaWord(const struct aiocb* cb, int i) {
  return reinterpret_cast<AliasedWord*>(const_cast<char*>(cb->__glibc_reserved) + 8 * i);
}

// Word 0: the ticket (generation << 32 | slot) of the request's current slot; kTicketPending while
// the orderer holds it back; 0 when it has none.
constexpr uint64_t kTicketPending = ~uint64_t{0};
uint64_t LoadTicket(const struct aiocb* cb) { return __atomic_load_n(MetaWord(cb, 0), __ATOMIC_ACQUIRE); }
void StoreTicket(struct aiocb* cb, uint64_t ticket) { __atomic_store_n(MetaWord(cb, 0), ticket, __ATOMIC_RELEASE); }

// Word 1: the owner: kOwnerMagic | pid.
constexpr uint64_t kOwnerMagic = uint64_t{0x6b61696f} << 32;  // "kaio"
constexpr uint64_t kOwnerPidMask = 0xffffffff;
uint64_t LoadOwner(const struct aiocb* cb) { return __atomic_load_n(MetaWord(cb, 1), __ATOMIC_ACQUIRE); }

std::atomic<int> g_pid{0};

int CurrentPid() {
  int pid = g_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    pid = static_cast<int>(getpid());
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

uint64_t OwnerWord() { return kOwnerMagic | (static_cast<uint64_t>(CurrentPid()) & kOwnerPidMask); }

// True if kaio accepted this aiocb in this process (and it is not from before a fork).
bool Ours(const struct aiocb* cb) {
  uint64_t owner = LoadOwner(cb);
  return owner == OwnerWord();
}

int LoadError(const struct aiocb* cb, int order = __ATOMIC_ACQUIRE) {
  return __atomic_load_n(&cb->__error_code, order);
}

bool InProgress(const struct aiocb* cb) {
  // seq_cst: waiters re-check after announcing themselves (see WakeWaiters).
  return Ours(cb) && LoadError(cb, __ATOMIC_SEQ_CST) == EINPROGRESS;
}

void MarkInProgress(struct aiocb* cb) {
  __atomic_store_n(&cb->__return_value, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&cb->__error_code, EINPROGRESS, __ATOMIC_RELAXED);
  StoreTicket(cb, 0);
  __atomic_store_n(MetaWord(cb, 1), OwnerWord(), __ATOMIC_RELEASE);
}

// The request's final result: bytes, or -errno.
void Publish(struct aiocb* cb, int64_t result) {
  __atomic_store_n(&cb->__return_value, result < 0 ? -1 : static_cast<ssize_t>(result), __ATOMIC_RELAXED);
  // seq_cst: releases the return value (and the buffer) and orders it before the waiters' check.
  __atomic_store_n(&cb->__error_code, result < 0 ? static_cast<int>(-result) : 0, __ATOMIC_SEQ_CST);
}

// A submission refused on the spot: the aiocb reports the error too (as glibc's does).
void MarkFailed(struct aiocb* cb, int error) {
  __atomic_store_n(&cb->__return_value, -1, __ATOMIC_RELAXED);
  __atomic_store_n(&cb->__error_code, error, __ATOMIC_RELAXED);
  StoreTicket(cb, 0);
  __atomic_store_n(MetaWord(cb, 1), OwnerWord(), __ATOMIC_RELEASE);
}

// ---------------------------------------------------------------- waiting for completions

// One futex word for every waiter (aio_suspend, lio_listio(LIO_WAIT), the orderer):
//   g_completion_word = completions << 1 | sleepers bit.
// A waiter sets the sleepers bit, keeps the word's value v, checks its condition, and sleeps on the
// futex only while the word still equals v. A completer publishes, adds 2, and if the bit was set
// clears it and wakes everyone; completers that find the bit clear make no system call, so a burst
// of completions costs one FUTEX_WAKE per sleep. Every change of the word (an add or the clearing)
// makes a stale sleep fail, and everything is seq_cst: either the waiter's check sees the result,
// or its sleep sees a changed word, or the completer sees the bit and wakes it.
alignas(64) uint32_t g_completion_word = 0;

long Futex(uint32_t* address, int op, uint32_t value, const struct timespec* timeout) {
  return syscall(SYS_futex, address, op, value, timeout, nullptr, 0);
}

void WakeWaiters() {
  uint32_t old = __atomic_fetch_add(&g_completion_word, 2, __ATOMIC_SEQ_CST);
  if (old & 1) {
    __atomic_fetch_and(&g_completion_word, ~uint32_t{1}, __ATOMIC_SEQ_CST);
    Futex(&g_completion_word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
  }
}

// Announces a sleeper; returns the word to sleep on. Check the condition after this.
uint32_t PrepareToWait() {
  uint32_t word = __atomic_load_n(&g_completion_word, __ATOMIC_SEQ_CST);
  while ((word & 1) == 0) {
    if (__atomic_compare_exchange_n(&g_completion_word, &word, word | 1, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
      return word | 1;
    }
  }
  return word;
}

// Sleeps while the word equals `word` (from PrepareToWait), until woken, the timeout (relative, may
// be null) passes, or a signal handler runs. Returns 0, or ETIMEDOUT / EINTR.
int SleepOnSequence(uint32_t word, const struct timespec* timeout) {
  long rc = Futex(&g_completion_word, FUTEX_WAIT_PRIVATE, word, timeout);
  if (rc == 0) return 0;
  if (errno == EINTR) return EINTR;
  if (errno == ETIMEDOUT) return ETIMEDOUT;
  return 0;  // EAGAIN: the word already changed
}

int64_t MonotonicNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

// Blocks every asynchronous signal for its scope, so threads started meanwhile inherit a full mask
// and process-directed signals (SIGEV_SIGNAL completions among them) go to the program's threads.
// Synchronous ones stay open: a crash in a kaio thread must still reach its handler.
class BlockAsyncSignals {
 public:
  BlockAsyncSignals() {
    sigset_t all;
    sigfillset(&all);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&all, sig);
    pthread_sigmask(SIG_BLOCK, &all, &old_);
  }
  ~BlockAsyncSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  BlockAsyncSignals(const BlockAsyncSignals&) = delete;
  BlockAsyncSignals& operator=(const BlockAsyncSignals&) = delete;

 private:
  sigset_t old_;
};

// ---------------------------------------------------------------- requests and records

enum class Op : uint8_t { kNone = 0, kRead, kWrite, kFsync, kFdsync };

short IoOpcode(Op op) {
  switch (op) {
    case Op::kRead:
      return IO_CMD_PREAD;
    case Op::kWrite:
      return IO_CMD_PWRITE;
    case Op::kFsync:
      return IO_CMD_FSYNC;
    case Op::kFdsync:
      return IO_CMD_FDSYNC;
    case Op::kNone:
      break;
  }
  return IO_CMD_NOOP;
}

bool IsSync(Op op) { return op == Op::kFsync || op == Op::kFdsync; }

struct DedicatedThread;

struct Notification {
  int notify = SIGEV_NONE;
  int signo = 0;
  union sigval value = {};
  void (*function)(union sigval) = nullptr;
  pthread_attr_t* attributes = nullptr;
  pid_t tid = 0;
  // SIGEV_SIGNAL with a number no signal has: glibc accepts the request, its sigqueue then fails,
  // and the request reports that failure (EINVAL) as its result. So does kaio.
  bool signal_fails = false;
  // Set by Notifier::Reserve on a completion's own copy: the thread with `attributes` started for
  // this callback.
  DedicatedThread* dedicated = nullptr;
};

// False for a sigevent kaio refuses (EINVAL): SIGEV_THREAD without a function, SIGEV_THREAD_ID
// (Linux's, which glibc's AIO ignores) without a signal and a thread. Everything else glibc accepts
// is accepted, notifying what glibc would: SIGEV_SIGNAL with signal 0 (what a zeroed aiocb holds,
// SIGEV_SIGNAL being 0 on Linux) and unknown sigev_notify values send nothing; a number no signal
// has fails the request with EINVAL once it has run (see Notification::signal_fails).
bool ParseSigevent(const struct sigevent& sev, Notification* n) {
  n->notify = sev.sigev_notify;
  n->signo = sev.sigev_signo;
  n->value = sev.sigev_value;
  switch (sev.sigev_notify) {
    case SIGEV_NONE:
      return true;
    case SIGEV_SIGNAL:
      // Signal 0 asks for none; a number no signal has is accepted and sends nothing, as glibc's
      // sigqueue fails quietly (its aio_read returns 0): a program cannot tell them apart there.
      if (sev.sigev_signo <= 0 || sev.sigev_signo >= NSIG) {
        n->notify = SIGEV_NONE;
        n->signal_fails = sev.sigev_signo != 0;
      }
      return true;
    case SIGEV_THREAD_ID:
      n->tid = sev._sigev_un._tid;
      return sev.sigev_signo > 0 && sev.sigev_signo < NSIG && n->tid > 0;
    case SIGEV_THREAD:
      // Refused without a function: glibc would start a thread that calls a null pointer.
      n->function = sev.sigev_notify_function;
      n->attributes = sev.sigev_notify_attributes;
      return n->function != nullptr;
    default:
      // glibc accepts any other value and notifies nothing; so does kaio.
      n->notify = SIGEV_NONE;
      return true;
  }
}

// A lio_listio(LIO_NOWAIT) with a sigevent: notified when `pending` reaches 0. The caller holds one
// count while it submits, so members finishing early cannot fire it before the list is queued.
struct LioGroup {
  std::atomic<int> pending{1};
  Notification notification;
};

struct Request {
  struct aiocb* cb = nullptr;
  Op op = Op::kNone;
  uint32_t slot_flags = 0;  // core::SlotFlags for the engine
  int fd = -1;
  char* buf = nullptr;
  uint64_t nbytes = 0;
  int64_t offset = 0;
  Notification notification;
  LioGroup* group = nullptr;
};

// Record::state = generation << kStateShift | RecordBits.
constexpr int kStateShift = 8;
enum RecordBits : uint64_t {
  kCancelWon = 1,    // aio_cancel publishes ECANCELED; Deliver must not touch the aiocb
  kDelivered = 2,    // the engine delivered the slot
  kCancelDone = 4,   // the winning canceller is finished with the record
  kFinal = 8,        // the aiocb holds its final result (or, for a link of a chain, the root does)
  kChainRoot = 16,   // a continuation runs the rest; this slot is kept until the chain ends
};
constexpr uint32_t kNoRoot = UINT32_MAX;

struct alignas(64) Record {
  std::atomic<uint64_t> state{0};
  // Read by scans (aio_cancel(fd, NULL), aio_fsync) of slots that may be reused under them: atomic.
  std::atomic<int> fd{-1};
  std::atomic<Op> op{Op::kNone};
  std::atomic<uint64_t> done{0};  // bytes moved by earlier links of a continued request
  std::atomic<struct aiocb*> cb{nullptr};
  // Plain: written before the slot is queued; read by whoever finalizes (ordered by the engine's
  // slot transitions, or by the canceller's CAS on `state`).
  Notification notification;
  LioGroup* group = nullptr;
  char* buf = nullptr;  // the whole request, not just this link
  uint64_t nbytes = 0;
  int64_t offset = 0;
  uint32_t root = kNoRoot;  // the first link of a continued request
  uint32_t root_generation = 0;
};

// Records parallel to the engine's slots, allocated in the same chunks, lazily.
class Records {
 public:
  static constexpr uint32_t kChunkBits = core::SlotTable::kChunkBits;
  static constexpr uint32_t kChunkSize = core::SlotTable::kChunkSize;

  explicit Records(uint32_t max_slots)
      : max_chunks_((max_slots + kChunkSize - 1) / kChunkSize), chunks_(new std::atomic<Record*>[max_chunks_]) {
    for (uint32_t i = 0; i < max_chunks_; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
  }
  ~Records() {
    for (uint32_t i = 0; i < max_chunks_; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
  }
  Records(const Records&) = delete;
  Records& operator=(const Records&) = delete;

  Record* TryAt(uint32_t index) const {
    uint32_t chunk = index >> kChunkBits;
    if (chunk >= max_chunks_) return nullptr;
    // acquire: pairs with the release that published the chunk.
    Record* records = chunks_[chunk].load(std::memory_order_acquire);
    return records == nullptr ? nullptr : &records[index & (kChunkSize - 1)];
  }
  Record& at(uint32_t index) const { return *TryAt(index); }
  Record& Ensure(uint32_t index) {
    if (Record* r = TryAt(index)) return *r;
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t chunk = index >> kChunkBits;
    Record* records = chunks_[chunk].load(std::memory_order_relaxed);
    if (records == nullptr) {
      records = new Record[kChunkSize];
      chunks_[chunk].store(records, std::memory_order_release);
    }
    return records[index & (kChunkSize - 1)];
  }

 private:
  const uint32_t max_chunks_;
  std::unique_ptr<std::atomic<Record*>[]> chunks_;
  std::mutex mu_;
};

struct Dep {
  uint32_t index;
  uint32_t generation;
};

// ---------------------------------------------------------------- SIGEV_THREAD

// Runs fn(value) as glibc runs a SIGEV_THREAD callback: with no signal blocked. kaio's threads
// otherwise block asynchronous signals (so that process-directed ones reach the program's threads
// while they wait); the mask is theirs again afterwards, whatever the callback did to it.
void RunCallback(void (*function)(union sigval), union sigval value) {
  sigset_t none, kept;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, &kept);
  function(value);
  pthread_sigmask(SIG_SETMASK, &kept, nullptr);
}

// A thread started with a request's sigev_notify_attributes before its result was published; it
// waits for that one callback, runs it and ends.
struct DedicatedThread {
  std::mutex mu;
  std::condition_variable cv;
  bool posted = false;
  void (*function)(union sigval) = nullptr;
  union sigval value = {};
};

// Runs SIGEV_THREAD callbacks on kaio's notification threads (never on the engine's). A completion
// claims a thread for its callback (Reserve) before it publishes its result, and hands the callback
// over (Post) after: an unclaimed idle thread, or a new one, so a callback that blocks never holds
// up another. Idle threads leave after 30 s unless claimed. With sigev_notify_attributes, Reserve
// starts a thread with those attributes (if they are refused, a notification thread serves).
// When no thread can be started (RLIMIT_NPROC, address space), Reserve fails and the completion
// reports EAGAIN instead (see State::ClaimNotifyThread); every other request goes on.
class Notifier {
 public:
  Notifier() = default;
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Claims a thread for the callback of `n` (SIGEV_THREAD). False if none is free and none can be
  // started. Every true must be followed by one Post(n).
  bool Reserve(Notification* n) {
    if (n->attributes != nullptr && (n->dedicated = SpawnWithAttributes(n->attributes)) != nullptr) return true;
    std::lock_guard<std::mutex> lock(mu_);
    if (available_ > owed_) {
      ++owed_;
      return true;
    }
    if (!StartWorkerLocked()) return false;
    ++owed_;
    return true;
  }

  void Post(const Notification& n) {
    if (DedicatedThread* d = n.dedicated) {
      std::lock_guard<std::mutex> lock(d->mu);
      d->function = n.function;
      d->value = n.value;
      d->posted = true;
      d->cv.notify_one();
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.push_back(Job{n.function, n.value});
    cv_.notify_one();
  }

 private:
  struct Job {
    void (*function)(union sigval);
    union sigval value;
  };

  static void ReportNoThread(const char* why) {
    static std::atomic<bool> reported{false};
    // relaxed: only decides who prints the one message.
    if (!reported.exchange(true, std::memory_order_relaxed)) {
      std::fprintf(stderr,
                   "kaio: cannot start a SIGEV_THREAD notification thread (%s); such requests report "
                   "EAGAIN while no thread can be started\n",
                   why);
    }
  }

  static void* RunDedicated(void* arg) {
    auto* d = static_cast<DedicatedThread*>(arg);
    void (*function)(union sigval);
    union sigval value;
    {
      std::unique_lock<std::mutex> lock(d->mu);
      d->cv.wait(lock, [d] { return d->posted; });
      function = d->function;
      value = d->value;
    }
    delete d;
    RunCallback(function, value);
    return nullptr;
  }

  static DedicatedThread* SpawnWithAttributes(pthread_attr_t* attributes) {
    auto* d = new DedicatedThread;
    pthread_t thread;
    int rc;
    {
      BlockAsyncSignals block;  // while it waits for its callback
      rc = pthread_create(&thread, attributes, RunDedicated, d);
    }
    if (rc != 0) {
      delete d;
      return nullptr;
    }
    int detach = PTHREAD_CREATE_DETACHED;
    if (pthread_attr_getdetachstate(attributes, &detach) == 0 && detach == PTHREAD_CREATE_JOINABLE) {
      pthread_detach(thread);  // nobody would join it
    }
    return d;
  }

  // Under mu_.
  bool StartWorkerLocked() {
    BlockAsyncSignals block;
    try {
      std::thread([this] { Worker(); }).detach();
    } catch (const std::system_error& e) {
      ReportNoThread(e.what());
      return false;
    }
    ++available_;
    return true;
  }

  void Worker() {
    pthread_setname_np(pthread_self(), "kaio-notify");
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (jobs_.empty()) {
        bool woke = cv_.wait_for(lock, std::chrono::seconds(30), [this] { return !jobs_.empty(); });
        if (!woke && available_ > owed_) {  // idle, and no claim counts on this thread
          --available_;
          return;
        }
        continue;
      }
      Job job = jobs_.front();
      jobs_.pop_front();
      --owed_;
      --available_;
      lock.unlock();
      RunCallback(job.function, job.value);
      lock.lock();
      ++available_;
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  size_t available_ = 0;  // notification threads not running a callback
  size_t owed_ = 0;       // callbacks claimed (Reserve) and not yet taken by a thread
};

// ---------------------------------------------------------------- buffered writes the kernel refuses

// The engine first offers every read and write to the kernel with RWF_NOWAIT and sends refusals to
// its blocking pool. Some filesystems (ext4 among them) refuse every buffered write that way, so each
// one would pay an io_submit, a kernel event and a reaper hand-off before reaching the pool. kaio
// remembers, per descriptor number, that a buffered write was refused, and sends the next 255
// buffered writes on that number straight to the pool; then it offers one to the kernel again (the
// number may name another file by then). A wrong guess costs only speed, never correctness.
class WriteRefusals {
 public:
  bool SkipKernel(int fd) {
    std::atomic<uint8_t>& left = left_[static_cast<unsigned>(fd) & (kSize - 1)];
    uint8_t n = left.load(std::memory_order_relaxed);
    if (n == 0) return false;
    left.store(static_cast<uint8_t>(n - 1), std::memory_order_relaxed);  // racy by design: a hint
    return true;
  }
  void Refused(int fd) { left_[static_cast<unsigned>(fd) & (kSize - 1)].store(255, std::memory_order_relaxed); }

 private:
  static constexpr size_t kSize = 4096;
  std::atomic<uint8_t> left_[kSize] = {};
};

// ---------------------------------------------------------------- the process-wide state

class State;

std::atomic<State*> g_state{nullptr};

// One producer token per thread for the engine's queue, created on the thread's first submission
// and deleted by a TLS destructor (ThreadTokenReaper). The thread may still submit after that: an
// atexit handler, a static destructor, or a thread_local destroyed later than the reaper. `retired`
// then sends its requests through State's shared token, never through the freed one. The struct
// itself is trivially destructible, so it stays valid for the whole life of the thread.
struct ThreadToken {
  const State* owner;
  runtime::Engine::ProducerToken* token;
  bool retired;
};
thread_local ThreadToken t_token = {nullptr, nullptr, false};

struct ThreadTokenReaper {
  bool armed = false;
  ~ThreadTokenReaper() {
    // A token of a state left behind by fork() belongs to the parent's queue: leave it. (acquire:
    // as every reader of g_state; here the pointer is only compared.)
    if (t_token.token != nullptr && t_token.owner == g_state.load(std::memory_order_acquire)) delete t_token.token;
    t_token.token = nullptr;
    t_token.retired = true;
  }
};
// Its destructor is registered on the thread's first use, i.e. when the token is created.
thread_local ThreadTokenReaper t_token_reaper;

// The outcome of cancelling one request.
enum class CancelOutcome { kCanceled, kNotCanceled, kAllDone, kRetry };

class Orderer;

// Who calls io_submit for a request (KAIO_INLINE_SUBMIT): the calling thread, while kaio's submitter
// sleeps, or the submitter. A thread that submits one request and then looks for results (aio_error,
// aio_return, aio_suspend) is bound by latency: submitting itself saves a thread hand-off (measured
// 1.5-1.6x the IOPS of O_DIRECT reads at iodepth 1, 4-7x for page-cache hits). A thread that submits
// a burst before it looks has work to overlap: the submitter takes the rest of the burst to
// io_submit in batches, on another CPU (submitting all of a 64-deep page-cache burst on the calling
// thread measured 0.6x of handing it over). Measured with fio, docs/posix.md.
enum class SubmitRoute {
  kSingle,   // aio_read/aio_write: inline if the thread looked at results since its last submission
  kList,     // a lio_listio entry of a list submitted inline: one flush after the last entry
  kHandOff,  // always through the submitter
};

// True for a thread's first submission and for one after it looked at results; the next
// submission before another look is part of a burst.
// initial-exec: aio_error is called in loops (fio asks each of its 64 requests on every pass), and
// the default model for a shared object costs a __tls_get_addr call per access.
thread_local bool t_looked_at_results __attribute__((tls_model("initial-exec"))) = true;
inline bool TakeLatencyBound() {
  const bool looked = t_looked_at_results;
  t_looked_at_results = false;
  return looked;
}
inline void NoteLookedAtResults() { t_looked_at_results = true; }

class State {
 public:
  State(std::unique_ptr<Service> service, const PosixOptions& options);
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  const PosixOptions& options() const { return options_; }
  runtime::Engine& engine() { return engine_; }

  // aio_read / aio_write / aio_fsync / a lio_listio entry. 0, or the errno of a refusal (the aiocb
  // then reports it as well). `route` says who calls io_submit (see SubmitRoute); with kList, a
  // request left for the caller's thread sets *flush, and the caller calls FlushInline() once after
  // the list's last entry. Otherwise the request is in the kernel, the pool or the submitter's hands
  // when this returns.
  int SubmitAiocb(struct aiocb* cb, Op op, LioGroup* group, SubmitRoute route = SubmitRoute::kSingle,
                  bool* flush = nullptr);
  // Submits what this thread queued for inline submission (see KAIO_INLINE_SUBMIT).
  void FlushInline() {
    if (runtime::Engine::ProducerToken* token = Token()) engine_.SubmitInline(*token);
  }

  // Claims and fills a slot for `req` (the link starting `done` bytes in), with the slot flags
  // `flags`, and points the aiocb's ticket at it. kNoSlot when max_requests are alive.
  uint32_t Prepare(const Request& req, uint32_t flags, uint64_t done, uint32_t root, uint32_t root_generation,
                   uint32_t* generation);
  // Hands a prepared slot to the engine.
  void Launch(uint32_t index);

  // The engine's Deliver.
  void OnDeliver(uint32_t index);

  // aio_cancel.
  int CancelAiocb(struct aiocb* cb);
  int CancelFd(int fd);

  // Publishes a result nobody else will deliver (cancelled or failed before reaching the engine).
  void Finish(struct aiocb* cb, int64_t result, const Notification& n, LioGroup* group);
  void CountCancelled() { counters_.cancelled.fetch_add(1, std::memory_order_relaxed); }
  // Drops one count of a lio_listio group; the last one sends the list's notification.
  void ReleaseGroup(LioGroup* group);

  // Writes on fd in flight now, for aio_fsync.
  std::vector<Dep> ScanWrites(int fd) const;
  // True once the request named by dep holds its final result.
  bool Done(const Dep& dep) const;

  // This thread's token; nullptr once its TLS destructor ran (see ThreadToken).
  runtime::Engine::ProducerToken* Token() {
    if (t_token.retired) return nullptr;
    if (t_token.owner != this) {
      t_token_reaper.armed = true;
      t_token.token = engine_.NewProducerToken().release();  // a previous owner's token is abandoned
      t_token.owner = this;
    }
    return t_token.token;
  }

  PosixStats Stats() const;

 private:
  class Sink final : public core::CompletionSink {
   public:
    explicit Sink(State& state) : state_(state) {}
    void Deliver(uint32_t index) override {
      // First: here `delivered` only tells SubmitNow whether another request is still running (this
      // engine is never shut down, so nothing waits on the count for a result). Counted after the
      // result was published, a program that saw it and submitted at once found its finished request
      // still running and was handed to the submitter instead of going inline.
      delivered.fetch_add(1, std::memory_order_seq_cst);
      state_.OnDeliver(index);
    }

   private:
    State& state_;
  };

  int SubmitNow(const Request& req, SubmitRoute route, bool* flush);
  bool MayContinue(const Record& rec, Op op, uint64_t done, int64_t result) const;
  bool Continue(uint32_t index, uint64_t word, Record& rec, uint64_t done);
  void FreeSlot(uint32_t index, uint64_t word) { engine_.slots().Free(index, word); }
  CancelOutcome CancelRequest(uint32_t index, uint32_t generation, struct aiocb* cb, uint64_t ticket);
  enum class Settle { kSettled, kMoved };
  Settle WaitSettled(const Record& rec, uint32_t generation, const struct aiocb* cb, uint64_t ticket) const;
  void ClaimNotifyThread(Notification* n, int64_t* result);
  void AfterCompletion(const Notification& n, LioGroup* group);
  void Notify(const Notification& n);
  void SendSignal(const Notification& n);

  const PosixOptions options_;
  std::unique_ptr<Service> service_;
  runtime::Engine& engine_;
  const pid_t pid_;
  const uid_t uid_;
  Records records_;
  Sink sink_;
  Notifier notifier_;
  std::unique_ptr<Orderer> orderer_;
  WriteRefusals write_refusals_;
  // For threads whose own token is gone (ThreadToken::retired): rare, so one token under a mutex.
  std::mutex retired_mu_;
  std::unique_ptr<runtime::Engine::ProducerToken> retired_token_;

  struct alignas(64) Counters {
    std::atomic<uint64_t> submitted{0}, ordered{0}, continued{0}, cancelled{0}, signals{0}, threads{0};
  } counters_;
};

// ---------------------------------------------------------------- the orderer

// Holds back requests that must wait for earlier writes on the same fd: writes to O_APPEND fds
// (released one at a time, in call order) and aio_fsync (released once the writes in flight when it
// was called have completed, and after everything held back before it on that fd). Submit releases
// at once what may go; the rest is released by the orderer's thread, which sleeps on the completion
// futex while anything is held.
class Orderer {
 public:
  explicit Orderer(State& state) : state_(state) {}
  Orderer(const Orderer&) = delete;
  Orderer& operator=(const Orderer&) = delete;

  // 0, or EAGAIN when the request would have to wait and the orderer's thread cannot be started
  // (it is then not held: nobody would release it).
  int Submit(const Request& req) {
    std::vector<uint32_t> launch;
    std::vector<Request> failed;
    int error = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      std::vector<Dep> deps;
      if (IsSync(req.op)) deps = state_.ScanWrites(req.fd);
      StoreTicket(req.cb, kTicketPending);
      Lane& lane = lanes_[req.fd];
      lane.pending.push_back(Entry{req, std::move(deps)});
      ++pending_;
      ReleaseReady(lane, &launch, &failed);
      if (pending_ > 0 && !StartThreadLocked()) {
        // Without the thread nothing is ever held, so the one entry still held is this request.
        lane.pending.pop_back();
        --pending_;
        error = EAGAIN;
      } else if (pending_ > 0) {
        cv_.notify_one();
      }
    }
    Finish(launch, failed);
    return error;
  }

  // Cancels `cb` if it is still held back. False if it is not (released meanwhile, or never held).
  bool CancelPending(struct aiocb* cb) {
    std::vector<uint32_t> launch;
    std::vector<Request> failed, cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = lanes_.find(cb->aio_fildes);
      if (it == lanes_.end()) return false;
      std::deque<Entry>& pending = it->second.pending;
      for (auto e = pending.begin(); e != pending.end(); ++e) {
        if (e->req.cb == cb) {
          cancelled.push_back(e->req);
          pending.erase(e);
          --pending_;
          break;
        }
      }
      if (cancelled.empty()) return false;
      ReleaseReady(it->second, &launch, &failed);
    }
    FinishCancelled(cancelled);
    Finish(launch, failed);
    return true;
  }

  // Cancels everything held back on fd; returns how many.
  size_t CancelFd(int fd) {
    std::vector<uint32_t> launch;
    std::vector<Request> failed, cancelled;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = lanes_.find(fd);
      if (it == lanes_.end()) return 0;
      for (Entry& e : it->second.pending) cancelled.push_back(e.req);
      pending_ -= it->second.pending.size();
      it->second.pending.clear();
    }
    FinishCancelled(cancelled);
    return cancelled.size();
  }

 private:
  struct Entry {
    Request req;
    std::vector<Dep> deps;
  };
  struct Lane {
    std::deque<Entry> pending;
    Dep last{0, 0};  // the last request released from this lane
    bool has_last = false;
  };

  // Under mu_: releases the lane's head while it may go. Prepared slots are launched, and refusals
  // finished, by the caller after unlocking (launching may deliver, and delivering may notify).
  void ReleaseReady(Lane& lane, std::vector<uint32_t>* launch, std::vector<Request>* failed) {
    while (!lane.pending.empty()) {
      Entry& head = lane.pending.front();
      if (lane.has_last && !state_.Done(lane.last)) return;
      for (const Dep& dep : head.deps) {
        if (!state_.Done(dep)) return;
      }
      uint32_t generation = 0;
      uint32_t index = state_.Prepare(head.req, head.req.slot_flags, 0, kNoRoot, 0, &generation);
      if (index == kNoSlot) {
        failed->push_back(head.req);
      } else {
        launch->push_back(index);
        lane.last = Dep{index, generation};
        lane.has_last = true;
      }
      lane.pending.pop_front();
      --pending_;
    }
  }

  void Finish(const std::vector<uint32_t>& launch, const std::vector<Request>& failed) {
    for (uint32_t index : launch) state_.Launch(index);
    for (const Request& req : failed) state_.Finish(req.cb, -EAGAIN, req.notification, req.group);
  }

  void FinishCancelled(const std::vector<Request>& cancelled) {
    for (const Request& req : cancelled) {
      state_.CountCancelled();
      state_.Finish(req.cb, -ECANCELED, req.notification, req.group);
    }
  }

  // False if the thread is not running and cannot be started now (a later Submit tries again).
  bool StartThreadLocked() {
    if (thread_started_) return true;
    BlockAsyncSignals block;
    try {
      std::thread([this] { Loop(); }).detach();
    } catch (const std::system_error& e) {
      std::fprintf(stderr, "kaio: cannot start the kaio-order thread (%s); the request gets EAGAIN\n", e.what());
      return false;
    }
    thread_started_ = true;
    return true;
  }

  void Loop() {
    pthread_setname_np(pthread_self(), "kaio-order");
    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (pending_ == 0) {
        cv_.wait(lock);
        continue;
      }
      uint32_t seq = PrepareToWait();
      std::vector<uint32_t> launch;
      std::vector<Request> failed;
      for (auto it = lanes_.begin(); it != lanes_.end();) {
        Lane& lane = it->second;
        if (!lane.pending.empty()) ReleaseReady(lane, &launch, &failed);
        if (lane.pending.empty() && (!lane.has_last || state_.Done(lane.last))) {
          it = lanes_.erase(it);
        } else {
          ++it;
        }
      }
      bool sleep = pending_ > 0 && launch.empty() && failed.empty();
      lock.unlock();
      Finish(launch, failed);
      if (sleep) SleepOnSequence(seq, nullptr);
      lock.lock();
    }
  }

  State& state_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Lane> lanes_;
  size_t pending_ = 0;
  bool thread_started_ = false;
};

// ---------------------------------------------------------------- State

State::State(std::unique_ptr<Service> service, const PosixOptions& options)
    : options_(options),
      service_(std::move(service)),
      engine_(service_->engine()),
      pid_(getpid()),
      uid_(getuid()),
      records_(static_cast<uint32_t>(options.service.max_requests)),
      sink_(*this),
      orderer_(std::make_unique<Orderer>(*this)) {
  engine_.RegisterSink(&sink_);
}

int State::SubmitAiocb(struct aiocb* cb, Op op, LioGroup* group, SubmitRoute route, bool* flush) {
  int error = 0;
  Request req;
  // aio_fsync reads only aio_fildes and aio_sigevent (as glibc's, which ignores aio_reqprio there).
  if (!IsSync(op) && (cb->aio_reqprio < 0 || cb->aio_reqprio > AIO_PRIO_DELTA_MAX)) {
    error = EINVAL;
  } else if (!ParseSigevent(cb->aio_sigevent, &req.notification)) {
    error = EINVAL;
  } else if (!engine_.accepting()) {
    error = EAGAIN;
  }
  if (error != 0) {
    MarkFailed(cb, error);
    return error;
  }
  req.cb = cb;
  req.op = op;
  req.fd = cb->aio_fildes;
  req.buf = static_cast<char*>(const_cast<void*>(cb->aio_buf));
  req.nbytes = cb->aio_nbytes;
  req.offset = cb->aio_offset;
  req.group = group;
  bool ordered = IsSync(op);
  if (op == Op::kWrite) {
    // Writes to an O_APPEND fd must land in call order, which concurrent kernel or pool requests
    // would not guarantee. (An fd fcntl cannot read fails the write in the kernel, with EBADF.)
    int saved = errno;
    int flags = fcntl(req.fd, F_GETFL);
    errno = saved;
    ordered = flags >= 0 && (flags & O_APPEND) != 0;
    if (flags >= 0 && (flags & O_DIRECT) == 0 && write_refusals_.SkipKernel(req.fd)) {
      req.slot_flags |= core::kSlotForcePool;
    }
  }
  MarkInProgress(cb);
  // relaxed: the caller holds the group's own count until the whole list is queued.
  if (group != nullptr) group->pending.fetch_add(1, std::memory_order_relaxed);
  if (op == Op::kNone) {
    // A lio_listio entry whose aio_lio_opcode names no operation: accepted, and failed with EINVAL
    // as its asynchronous result, notification included (as glibc does). relaxed: a statistic.
    counters_.submitted.fetch_add(1, std::memory_order_relaxed);
    Finish(cb, -EINVAL, req.notification, group);
    return 0;
  }
  // A slot or a thread the orderer could not get (EAGAIN) refuses the request here; a refusal
  // after it was held back is its asynchronous result.
  if (int err = ordered ? orderer_->Submit(req) : SubmitNow(req, route, flush); err != 0) {
    // relaxed: as the add above; never the last count.
    if (group != nullptr) group->pending.fetch_sub(1, std::memory_order_relaxed);
    MarkFailed(cb, err);
    return err;
  }
  if (ordered) counters_.ordered.fetch_add(1, std::memory_order_relaxed);  // relaxed: statistics
  counters_.submitted.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

int State::SubmitNow(const Request& req, SubmitRoute route, bool* flush) {
  uint32_t generation = 0;
  uint32_t index = Prepare(req, req.slot_flags, 0, kNoRoot, 0, &generation);
  if (index == kNoSlot) return EAGAIN;
  if (req.slot_flags & core::kSlotForcePool) {  // bound for the pool: Launch hands it there directly
    Launch(index);
    return 0;
  }
  // A lone request is submitted here only while none of the process's other requests is still
  // running. Behind a device queue the hand-off's few microseconds are lost in the queueing, while
  // a one-request io_submit on the calling thread costs it a device notification (a VM exit on
  // virtio) that the submitter pays once per chunk, and holds up the burst that may follow
  // (docs/posix.md: O_DIRECT reads at iodepth 64 measured 0.92-0.94x of hand-off-only).
  const bool go_inline =
      route == SubmitRoute::kList ||
      (route == SubmitRoute::kSingle && TakeLatencyBound() &&
       sink_.accepted.load(std::memory_order_relaxed) == sink_.delivered.load(std::memory_order_relaxed));
  runtime::Engine::ProducerToken* token = Token();
  if (!options_.inline_submit || !go_inline || token == nullptr) {
    Launch(index);
    return 0;
  }
  // The calling thread calls io_submit itself while the submitter sleeps (RWF_NOWAIT: it cannot
  // block there; what the kernel refuses goes to the pool): one thread hand-off fewer, none for a
  // page-cache hit, whose result is published before aio_read returns. POSIX wants the request to
  // progress with no further call from the program, so it is flushed now (a list: after its last
  // entry), never left for a later aio_suspend. An awake submitter takes it as usual.
  sink_.accepted.fetch_add(1, std::memory_order_seq_cst);  // before the enqueue, as in Launch
  if (engine_.EnqueueDeferred(*token, index)) {
    if (route == SubmitRoute::kList) {
      *flush = true;
    } else {
      FlushInline();
    }
  }
  return 0;
}

uint32_t State::Prepare(const Request& req, uint32_t flags, uint64_t done, uint32_t root, uint32_t root_generation,
                        uint32_t* generation) {
  uint32_t index = engine_.Claim(sink_, reinterpret_cast<uintptr_t>(req.cb));
  if (index == kNoSlot) return kNoSlot;
  core::Slot& slot = engine_.slots().at(index);
  *generation = WordGeneration(slot.word.load(std::memory_order_relaxed));
  slot.cb.aio_fildes = req.fd;
  slot.cb.aio_lio_opcode = IoOpcode(req.op);
  if (!IsSync(req.op)) {
    slot.cb.u.c.buf = req.buf + done;
    slot.cb.u.c.nbytes = req.nbytes - done;
    slot.cb.u.c.offset = req.offset + static_cast<int64_t>(done);
  }
  slot.flags |= flags;
  Record& rec = records_.Ensure(index);
  rec.fd.store(req.fd, std::memory_order_relaxed);
  rec.op.store(req.op, std::memory_order_relaxed);
  rec.done.store(done, std::memory_order_relaxed);
  rec.cb.store(req.cb, std::memory_order_relaxed);
  rec.notification = req.notification;
  rec.group = req.group;
  rec.buf = req.buf;
  rec.nbytes = req.nbytes;
  rec.offset = req.offset;
  rec.root = root;
  rec.root_generation = root_generation;
  // release: a scanner or canceller that acquires the state sees the fields above.
  rec.state.store(uint64_t{*generation} << kStateShift, std::memory_order_release);
  StoreTicket(req.cb, core::PackTicket(*generation, index));
  return index;
}

void State::Launch(uint32_t index) {
  // Many threads submit through this sink: a read-modify-write. Counted before the enqueue, as the
  // engine requires. The POSIX service is never shut down, so the refuse-after-counting handshake
  // Requester::Submit does with Engine::accepting() is not needed here.
  sink_.accepted.fetch_add(1, std::memory_order_seq_cst);
  if (engine_.slots().at(index).flags & core::kSlotForcePool) {
    // A buffered write the kernel would refuse, or the rest of a short result: the pool's work
    // either way, so it skips the submitter's queue and wake-up.
    engine_.EnqueueToPool(index);
  } else if (runtime::Engine::ProducerToken* token = Token()) {
    engine_.Enqueue(*token, index);
  } else {
    std::lock_guard<std::mutex> lock(retired_mu_);
    if (retired_token_ == nullptr) retired_token_ = engine_.NewProducerToken();
    engine_.Enqueue(*retired_token_, index);
  }
}

bool State::MayContinue(const Record& rec, Op op, uint64_t done, int64_t result) const {
  if (static_cast<uint64_t>(result) >= rec.nbytes - done) return false;
  if (op == Op::kWrite) return true;  // a blocking write(2) would have written it all
  if (op == Op::kRead) {
    // A regular file or block device read stops short only at end of file, or under RWF_NOWAIT at an
    // uncached page; pipes and sockets return what they have, which is already right.
    struct stat st;
    int saved = errno;
    bool regular = fstat(rec.fd.load(std::memory_order_relaxed), &st) == 0 &&
                   (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode));
    errno = saved;
    return regular;
  }
  return false;
}

bool State::Continue(uint32_t index, uint64_t word, Record& rec, uint64_t done) {
  Request req;
  req.cb = rec.cb.load(std::memory_order_relaxed);
  req.op = rec.op.load(std::memory_order_relaxed);
  req.fd = rec.fd.load(std::memory_order_relaxed);
  req.buf = rec.buf;
  req.nbytes = rec.nbytes;
  req.offset = rec.offset;
  req.notification = rec.notification;
  req.group = rec.group;
  bool is_root = rec.root == kNoRoot;
  uint32_t root = is_root ? index : rec.root;
  uint32_t root_generation = is_root ? WordGeneration(word) : rec.root_generation;
  uint32_t generation = 0;
  // The rest runs in the blocking pool: the kernel already declined to finish it without blocking.
  uint32_t next = Prepare(req, core::kSlotForcePool, done, root, root_generation, &generation);
  if (next == kNoSlot) return false;  // no slot: the caller gets the partial result
  counters_.continued.fetch_add(1, std::memory_order_relaxed);
  if (is_root) {
    // Kept (not final, not freed) until the chain ends, so a scan that starts now still sees it.
    rec.state.fetch_or(kChainRoot, std::memory_order_acq_rel);
  } else {
    rec.state.fetch_or(kFinal, std::memory_order_acq_rel);
    FreeSlot(index, word);
  }
  Launch(next);
  return true;
}

void State::OnDeliver(uint32_t index) {
  core::Slot& slot = engine_.slots().at(index);
  // acquire: the engine's move into kCompleted published the result.
  uint64_t word = slot.word.load(std::memory_order_acquire);
  int64_t result = slot.result.load(std::memory_order_relaxed);
  Record& rec = records_.at(index);
  uint64_t prev = rec.state.fetch_or(kDelivered, std::memory_order_acq_rel);
  if (prev & kCancelWon) {
    // aio_cancel published ECANCELED; the slot is freed by whichever of us finishes last.
    if (prev & kCancelDone) FreeSlot(index, word);
    return;
  }
  Op op = rec.op.load(std::memory_order_relaxed);
  uint64_t done = rec.done.load(std::memory_order_relaxed);
  if (op == Op::kWrite && options_.service.fallback_threads > 0 &&
      (slot.flags & (core::kSlotForcePool | core::kSlotForceKernel | core::kSlotNowait | core::kSlotStream)) == 0) {
    // Offered to the kernel with RWF_NOWAIT (the engine does for every write it may send to the
    // pool) and refused: the engine cleared kSlotNowait and ran it in the pool. (Not a stream
    // lane's write, which never saw the kernel: taken for refused, the next writes to the pipe went
    // straight to the lane from this thread and overtook one still in the submitter's queue.)
    write_refusals_.Refused(rec.fd.load(std::memory_order_relaxed));
  }
  // A stream lane's write is short only where write(2) would be (O_NONBLOCK, an error after some
  // bytes): its rest sent as a new request would land behind the lane's later writes.
  if (result > 0 && (slot.flags & core::kSlotStream) == 0 && MayContinue(rec, op, done, result) &&
      Continue(index, word, rec, done + result)) {
    return;
  }
  int64_t final_result = result;
  if (result >= 0) {
    final_result = static_cast<int64_t>(done) + result;
  } else if (done > 0) {
    final_result = static_cast<int64_t>(done);  // as write(2): what was written before the error
  }
  struct aiocb* cb = rec.cb.load(std::memory_order_relaxed);
  Notification n = rec.notification;
  LioGroup* group = rec.group;
  uint32_t root = rec.root;
  uint32_t root_generation = rec.root_generation;
  ClaimNotifyThread(&n, &final_result);
  if (n.signal_fails) final_result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
  Publish(cb, final_result);  // from here on the aiocb is the program's again
  if (root != kNoRoot) {
    records_.at(root).state.fetch_or(kFinal, std::memory_order_acq_rel);
    FreeSlot(root, core::PackWord(root_generation, SlotState::kCompleted));
  }
  rec.state.fetch_or(kFinal, std::memory_order_acq_rel);
  FreeSlot(index, word);
  AfterCompletion(n, group);
}

void State::Finish(struct aiocb* cb, int64_t result, const Notification& notification, LioGroup* group) {
  Notification n = notification;
  ClaimNotifyThread(&n, &result);
  if (n.signal_fails) result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
  Publish(cb, result);
  AfterCompletion(n, group);
}

// Before a result is published: a SIGEV_THREAD callback needs a thread, claimed while the result
// can still say that none could be started (EAGAIN; the callback does not run). glibc's code means
// to do the same, but it tests pthread_create's result for < 0, so there the callback is silently
// lost and the request keeps its result.
void State::ClaimNotifyThread(Notification* n, int64_t* result) {
  if (n->notify != SIGEV_THREAD || notifier_.Reserve(n)) return;
  *result = -EAGAIN;
  n->notify = SIGEV_NONE;
}

void State::AfterCompletion(const Notification& n, LioGroup* group) {
  WakeWaiters();
  Notify(n);
  if (group != nullptr) ReleaseGroup(group);
}

void State::ReleaseGroup(LioGroup* group) {
  if (group->pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  Notification list = group->notification;
  delete group;
  // No aiocb can tell that the list's callback could not run (glibc drops it too).
  if (list.notify == SIGEV_THREAD && !notifier_.Reserve(&list)) return;
  Notify(list);
}

void State::Notify(const Notification& n) {
  switch (n.notify) {
    case SIGEV_SIGNAL:
    case SIGEV_THREAD_ID:
      SendSignal(n);
      break;
    case SIGEV_THREAD:
      counters_.threads.fetch_add(1, std::memory_order_relaxed);
      notifier_.Post(n);
      break;
    default:
      break;
  }
}

void State::SendSignal(const Notification& n) {
  siginfo_t info;
  std::memset(&info, 0, sizeof(info));
  info.si_signo = n.signo;
  info.si_code = SI_ASYNCIO;
  info.si_pid = pid_;
  info.si_uid = uid_;
  info.si_value = n.value;
  int saved = errno;
  if (n.notify == SIGEV_THREAD_ID) {
    syscall(SYS_rt_tgsigqueueinfo, pid_, n.tid, n.signo, &info);
  } else {
    syscall(SYS_rt_sigqueueinfo, pid_, n.signo, &info);
  }
  errno = saved;
  counters_.signals.fetch_add(1, std::memory_order_relaxed);
}

std::vector<Dep> State::ScanWrites(int fd) const {
  std::vector<Dep> deps;
  uint32_t count = engine_.slots().allocated();
  for (uint32_t index = 0; index < count; ++index) {
    const Record* rec = records_.TryAt(index);
    if (rec == nullptr) continue;
    uint64_t state = rec->state.load(std::memory_order_acquire);
    if (state == 0 || (state & kFinal)) continue;
    if (rec->op.load(std::memory_order_relaxed) != Op::kWrite) continue;
    if (rec->fd.load(std::memory_order_relaxed) != fd) continue;
    // If the slot was reused since `state` was read, the dep is simply already done.
    deps.push_back(Dep{index, static_cast<uint32_t>(state >> kStateShift)});
  }
  return deps;
}

bool State::Done(const Dep& dep) const {
  const Record* rec = records_.TryAt(dep.index);
  if (rec == nullptr) return true;
  uint64_t state = rec->state.load(std::memory_order_acquire);
  return static_cast<uint32_t>(state >> kStateShift) != dep.generation || (state & kFinal) != 0;
}

State::Settle State::WaitSettled(const Record& rec, uint32_t generation, const struct aiocb* cb,
                                 uint64_t ticket) const {
  // The slot reached kCompleted, so its Deliver is running now on the thread that completed it (or a
  // canceller that won is publishing): this wait is a few hundred instructions at most.
  for (int spins = 0;; ++spins) {
    uint64_t state = rec.state.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(state >> kStateShift) != generation || (state & kFinal)) return Settle::kSettled;
    if (state & kChainRoot) return Settle::kMoved;
    if (cb != nullptr && LoadTicket(cb) != ticket) return Settle::kMoved;
    if (spins > 100) sched_yield();
  }
}

CancelOutcome State::CancelRequest(uint32_t index, uint32_t generation, struct aiocb* cb, uint64_t ticket) {
  Record* rec = records_.TryAt(index);
  if (rec == nullptr) return CancelOutcome::kAllDone;
  uint64_t state = rec->state.load(std::memory_order_acquire);
  if (static_cast<uint32_t>(state >> kStateShift) != generation || (state & kFinal)) return CancelOutcome::kRetry;
  // A continuation finishes a request that has already moved data: it cannot be undone.
  if ((state & kChainRoot) || rec->done.load(std::memory_order_relaxed) > 0) return CancelOutcome::kNotCanceled;
  absl::StatusOr<CancelResult> engine_result = engine_.Cancel(index, generation);
  if (!engine_result.ok()) return CancelOutcome::kRetry;  // stale, or still being launched
  switch (*engine_result) {
    case CancelResult::kNotCanceled:
      return CancelOutcome::kNotCanceled;
    case CancelResult::kAllDone:
      return WaitSettled(*rec, generation, cb, ticket) == Settle::kMoved && cb == nullptr
                 ? CancelOutcome::kNotCanceled
                 : CancelOutcome::kRetry;
    case CancelResult::kCanceled:
      break;
  }
  uint64_t expected = uint64_t{generation} << kStateShift;
  if (rec->state.compare_exchange_strong(expected, expected | kCancelWon, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
    // Ours: publish ECANCELED now (the engine may hand the slot back much later, when its holder
    // gets to it), notify, and leave the slot to whichever of us and Deliver finishes last.
    struct aiocb* target = rec->cb.load(std::memory_order_relaxed);
    Notification n = rec->notification;
    LioGroup* group = rec->group;
    int64_t result = -ECANCELED;
    ClaimNotifyThread(&n, &result);
    if (n.signal_fails) result = -EINVAL;  // glibc's answer (see Notification::signal_fails)
    Publish(target, result);
    rec->state.fetch_or(kFinal, std::memory_order_acq_rel);
    uint64_t prev = rec->state.fetch_or(kCancelDone, std::memory_order_acq_rel);
    if (prev & kDelivered) FreeSlot(index, core::PackWord(generation, SlotState::kCompleted));
    CountCancelled();
    AfterCompletion(n, group);
    return CancelOutcome::kCanceled;
  }
  // Deliver (or another canceller) got there first; it publishes ECANCELED momentarily.
  Settle settle = WaitSettled(*rec, generation, cb, ticket);
  if (cb == nullptr) return settle == Settle::kMoved ? CancelOutcome::kNotCanceled : CancelOutcome::kCanceled;
  if (settle == Settle::kMoved) return CancelOutcome::kRetry;
  // A cancelled request reports ECANCELED, or EINVAL when its signal number is bad (glibc's answer,
  // see Notification::signal_fails; the record may be another request's by now, so not read).
  const int error = LoadError(cb);
  return error == ECANCELED || error == EINVAL ? CancelOutcome::kCanceled : CancelOutcome::kAllDone;
}

int State::CancelAiocb(struct aiocb* cb) {
  for (int round = 0;; ++round) {
    if (LoadError(cb) != EINPROGRESS) return AIO_ALLDONE;
    uint64_t ticket = LoadTicket(cb);
    if (ticket == kTicketPending) {
      if (orderer_->CancelPending(cb)) return AIO_CANCELED;
      continue;  // released meanwhile: its ticket is a slot's now
    }
    if (ticket != 0) {
      switch (CancelRequest(core::TicketIndex(ticket), core::TicketGeneration(ticket), cb, ticket)) {
        case CancelOutcome::kCanceled:
          return AIO_CANCELED;
        case CancelOutcome::kNotCanceled:
          return AIO_NOTCANCELED;
        case CancelOutcome::kAllDone:
          return AIO_ALLDONE;
        case CancelOutcome::kRetry:
          break;
      }
    }
    if (round > 100) sched_yield();
  }
}

int State::CancelFd(int fd) {
  bool any_cancelled = orderer_->CancelFd(fd) > 0;
  bool any_running = false;
  uint32_t count = engine_.slots().allocated();
  for (uint32_t index = 0; index < count; ++index) {
    Record* rec = records_.TryAt(index);
    if (rec == nullptr) continue;
    uint64_t state = rec->state.load(std::memory_order_acquire);
    if (state == 0 || (state & kFinal)) continue;
    if (rec->fd.load(std::memory_order_relaxed) != fd) continue;
    switch (CancelRequest(index, static_cast<uint32_t>(state >> kStateShift), nullptr, 0)) {
      case CancelOutcome::kCanceled:
        any_cancelled = true;
        break;
      case CancelOutcome::kNotCanceled:
        any_running = true;
        break;
      case CancelOutcome::kAllDone:
      case CancelOutcome::kRetry:  // finished (and maybe reused) meanwhile
        break;
    }
  }
  if (any_running) return AIO_NOTCANCELED;
  return any_cancelled ? AIO_CANCELED : AIO_ALLDONE;
}

PosixStats State::Stats() const {
  PosixStats s;
  s.started = true;
  s.submitted = counters_.submitted.load(std::memory_order_relaxed);
  s.ordered = counters_.ordered.load(std::memory_order_relaxed);
  s.continued = counters_.continued.load(std::memory_order_relaxed);
  s.cancelled = counters_.cancelled.load(std::memory_order_relaxed);
  s.signals_sent = counters_.signals.load(std::memory_order_relaxed);
  s.threads_notified = counters_.threads.load(std::memory_order_relaxed);
  s.service = service_->Stats();
  return s;
}

// ---------------------------------------------------------------- start-up, fork, exit

// Guards start-up; no global here has a destructor (threads may run while the program exits).
std::mutex g_init_mu;
bool g_config_failed = false;          // a malformed option: every submission fails with EINVAL
PosixOptions* g_configured = nullptr;  // Configure()'s options, if any
bool g_stats_at_exit = false;

void AtforkPrepare() { g_init_mu.lock(); }
void AtforkParent() { g_init_mu.unlock(); }
void AtforkChild() {
  // The engine's threads did not come along: the child starts its own service when it needs one.
  // The parent's state is abandoned, not destroyed (its mutexes may be held by threads that are
  // gone).
  g_state.store(nullptr, std::memory_order_relaxed);
  g_pid.store(static_cast<int>(getpid()), std::memory_order_relaxed);
  g_init_mu.unlock();
}

[[maybe_unused]] const bool g_atfork_registered = [] {
  pthread_atfork(AtforkPrepare, AtforkParent, AtforkChild);
  return true;
}();

void PrintStatsAtExit() {
  State* s = g_state.load(std::memory_order_acquire);
  if (s == nullptr) return;
  PosixStats st = s->Stats();
  std::fprintf(stderr,
               "kaio: pid %d: %llu POSIX AIO requests (%llu held back for ordering, %llu short results "
               "continued, %llu cancelled, %llu signals, %llu SIGEV_THREAD callbacks); engine: %llu "
               "completed, %llu to the kernel in %llu io_submit calls (average batch %.1f), %llu in "
               "the blocking pool, %llu RWF_NOWAIT refusals; %llu submitted and %llu reaped on the "
               "callers' threads\n",
               static_cast<int>(getpid()), static_cast<unsigned long long>(st.submitted),
               static_cast<unsigned long long>(st.ordered), static_cast<unsigned long long>(st.continued),
               static_cast<unsigned long long>(st.cancelled), static_cast<unsigned long long>(st.signals_sent),
               static_cast<unsigned long long>(st.threads_notified),
               static_cast<unsigned long long>(st.service.requests_completed),
               static_cast<unsigned long long>(st.service.kernel_submitted),
               static_cast<unsigned long long>(st.service.io_submit_calls), st.service.average_batch,
               static_cast<unsigned long long>(st.service.pool_requests),
               static_cast<unsigned long long>(st.service.nowait_retries),
               static_cast<unsigned long long>(st.service.inline_submitted),
               static_cast<unsigned long long>(st.service.inline_reaped));
}

State* StartSlow(int* error) {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (State* s = g_state.load(std::memory_order_relaxed)) return s;
  if (g_config_failed) {
    *error = EINVAL;
    return nullptr;
  }
  PosixOptions options;
  if (g_configured != nullptr) {
    options = *g_configured;
  } else {
    absl::StatusOr<PosixOptions> parsed = OptionsFromEnvironment();
    if (!parsed.ok()) {
      std::fprintf(stderr,
                   "%s\nkaio: POSIX AIO is disabled: aio_read, aio_write, aio_fsync and lio_listio fail "
                   "with EINVAL until the variable is fixed or unset.\n",
                   std::string(parsed.status().message()).c_str());
      g_config_failed = true;
      *error = EINVAL;
      return nullptr;
    }
    options = *parsed;
  }
  absl::StatusOr<std::unique_ptr<Service>> service;
  {
    BlockAsyncSignals block;  // the engine's threads inherit it
    service = Service::Create(options.service);
  }
  if (!service.ok()) {
    std::fprintf(stderr, "kaio: cannot start the POSIX AIO service: %s\n",
                 std::string(service.status().message()).c_str());
    if (absl::IsInvalidArgument(service.status())) {
      g_config_failed = true;
      *error = EINVAL;
    } else {
      *error = EAGAIN;
    }
    return nullptr;
  }
  g_pid.store(static_cast<int>(getpid()), std::memory_order_relaxed);
  State* s = new State(*std::move(service), options);
  g_state.store(s, std::memory_order_release);
  if (options.print_stats && !g_stats_at_exit) {
    g_stats_at_exit = true;
    std::atexit(PrintStatsAtExit);
  }
  if (options.verbose) {
    std::fprintf(stderr,
                 "kaio: POSIX AIO on kaio in pid %d (queue depth %d, %d pool threads, idle release %lld ms, "
                 "max %d requests)\n",
                 static_cast<int>(getpid()), options.service.queue_depth, options.service.fallback_threads,
                 static_cast<long long>(absl::ToInt64Milliseconds(options.service.idle_release)),
                 options.service.max_requests);
  }
  return s;
}

State* GetState(int* error) {
  State* s = g_state.load(std::memory_order_acquire);
  return s != nullptr ? s : StartSlow(error);
}

int Submit(struct aiocb* cb, Op op) {
  int error = 0;
  State* s = GetState(&error);
  if (s == nullptr) {
    MarkFailed(cb, error);
  } else {
    error = s->SubmitAiocb(cb, op, nullptr);
  }
  if (error == 0) return 0;
  errno = error;
  return -1;
}

// Waits until no listed, non-NOP request is in progress. 0, or EINTR.
int WaitAllListed(struct aiocb* const list[], int nent) {
  while (true) {
    uint32_t seq = PrepareToWait();
    bool all_done = true;
    for (int i = 0; i < nent && all_done; ++i) {
      if (list[i] != nullptr && list[i]->aio_lio_opcode != LIO_NOP && InProgress(list[i])) all_done = false;
    }
    if (all_done) return 0;
    if (SleepOnSequence(seq, nullptr) == EINTR) return EINTR;
  }
}

}  // namespace

absl::Status Configure(const PosixOptions& options) {
  std::lock_guard<std::mutex> lock(g_init_mu);
  if (g_state.load(std::memory_order_relaxed) != nullptr) {
    return absl::FailedPreconditionError("kaio: POSIX AIO already started; Configure() must come first");
  }
  delete g_configured;
  g_configured = new PosixOptions(options);
  g_config_failed = false;
  return absl::OkStatus();
}

PosixStats Stats() {
  State* s = g_state.load(std::memory_order_acquire);
  return s == nullptr ? PosixStats{} : s->Stats();
}

}  // namespace kaio::posix

// ---------------------------------------------------------------- the C entry points

using kaio::posix::Op;

extern "C" int kaio_aio_read(struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, Op::kRead);
}

extern "C" int kaio_aio_write(struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, Op::kWrite);
}

extern "C" int kaio_aio_fsync(int op, struct aiocb* aiocbp) {
  if (aiocbp == nullptr) {
    errno = EINVAL;
    return -1;
  }
  // Refusals mark the aiocb, as every submission's do (kaio/posix.h); glibc's leave it untouched.
  int error = 0;
  if (op != O_SYNC && op != O_DSYNC) {
    error = EINVAL;
  } else if (fcntl(aiocbp->aio_fildes, F_GETFL) < 0) {
    // Only an fd that is not open: a read-only one, a directory's included, is synced (as glibc
    // and the kernel's IOCB_CMD_FSYNC do; POSIX.1-2008 dropped "open for writing"), which is how a
    // program makes a rename durable.
    error = EBADF;
  }
  if (error != 0) {
    kaio::posix::MarkFailed(aiocbp, error);
    errno = error;
    return -1;
  }
  return kaio::posix::Submit(aiocbp, op == O_SYNC ? Op::kFsync : Op::kFdsync);
}

extern "C" int kaio_aio_error(const struct aiocb* aiocbp) {
  kaio::posix::NoteLookedAtResults();
  if (aiocbp == nullptr || !kaio::posix::Ours(aiocbp)) {
    errno = EINVAL;
    return -1;
  }
  return kaio::posix::LoadError(aiocbp);
}

extern "C" ssize_t kaio_aio_return(struct aiocb* aiocbp) {
  kaio::posix::NoteLookedAtResults();
  if (aiocbp == nullptr || !kaio::posix::Ours(aiocbp)) {
    errno = EINVAL;
    return -1;
  }
  int error = kaio::posix::LoadError(aiocbp);
  if (error == EINPROGRESS) {
    errno = EINPROGRESS;
    return -1;
  }
  // Idempotent, as glibc's: a second call returns the same value (POSIX leaves it undefined, and
  // programs that call it twice work on glibc).
  // errno is left alone, as glibc leaves it: the request's error is aio_error's to tell.
  return __atomic_load_n(&aiocbp->__return_value, __ATOMIC_RELAXED);
}

extern "C" int kaio_aio_cancel(int fildes, struct aiocb* aiocbp) {
  int saved = errno;
  if (fcntl(fildes, F_GETFD) < 0) {
    errno = EBADF;
    return -1;
  }
  errno = saved;
  if (aiocbp != nullptr && aiocbp->aio_fildes != fildes) {
    errno = EINVAL;
    return -1;
  }
  kaio::posix::State* s = kaio::posix::g_state.load(std::memory_order_acquire);
  if (s == nullptr) return AIO_ALLDONE;  // nothing was ever submitted in this process
  if (aiocbp != nullptr) {
    if (!kaio::posix::Ours(aiocbp)) return AIO_ALLDONE;
    return s->CancelAiocb(aiocbp);
  }
  return s->CancelFd(fildes);
}

extern "C" int kaio_aio_suspend(const struct aiocb* const list[], int nent, const struct timespec* timeout) {
  kaio::posix::NoteLookedAtResults();
  pthread_testcancel();
  if (nent < 0 || (list == nullptr && nent > 0)) {
    errno = EINVAL;
    return -1;
  }
  // The timeout is not checked (POSIX names no EINVAL for it): as glibc, a finished request answers
  // 0 whatever it holds, a negative one has already expired (EAGAIN), and a tv_nsec out of range
  // just adds its nanoseconds.
  int64_t deadline = 0;
  if (timeout != nullptr) {
    // Saturated: past about 292 years (9.2e9 s) the nanosecond count overflows, and such a timeout
    // means "never" (glibc 2.36 overflows itself at tv_sec = LONG_MAX and answers EAGAIN at once).
    int64_t span = 0;
    if (__builtin_mul_overflow(int64_t{timeout->tv_sec}, int64_t{1000000000}, &span) ||
        __builtin_add_overflow(span, int64_t{timeout->tv_nsec}, &span) ||
        __builtin_add_overflow(span, kaio::posix::MonotonicNs(), &deadline)) {
      deadline = timeout->tv_sec < 0 ? 0 : INT64_MAX;
    }
  }
  while (true) {
    uint32_t seq = kaio::posix::PrepareToWait();
    bool any_pending = false;
    for (int i = 0; i < nent; ++i) {
      if (list[i] == nullptr) continue;
      if (!kaio::posix::InProgress(list[i])) return 0;  // one has completed (or is not kaio's)
      any_pending = true;
    }
    if (!any_pending) return 0;  // nothing to wait for
    struct timespec left;
    if (timeout != nullptr) {
      int64_t remaining = deadline - kaio::posix::MonotonicNs();
      if (remaining <= 0) {
        errno = EAGAIN;
        return -1;
      }
      left.tv_sec = remaining / 1000000000;
      left.tv_nsec = remaining % 1000000000;
    }
    // aio_suspend is a cancellation point: a cancel that arrives while it sleeps ends the thread
    // there, as glibc's cancellable futex wait does (the same asynchronous-cancel window around one
    // system call). Nothing needs undoing: a stale sleepers bit only costs a wake-up.
    int cancel_type = PTHREAD_CANCEL_DEFERRED;
    pthread_setcanceltype(PTHREAD_CANCEL_ASYNCHRONOUS, &cancel_type);
    const int slept = kaio::posix::SleepOnSequence(seq, timeout != nullptr ? &left : nullptr);
    pthread_setcanceltype(cancel_type, nullptr);
    if (slept == EINTR) {
      errno = EINTR;
      return -1;
    }
  }
}

extern "C" int kaio_lio_listio(int mode, struct aiocb* const list[], int nent, struct sigevent* sig) {
  using kaio::posix::LioGroup;
  using kaio::posix::Notification;
  if ((mode != LIO_WAIT && mode != LIO_NOWAIT) || nent < 0 || (list == nullptr && nent > 0)) {
    errno = EINVAL;
    return -1;
  }
  Notification list_notification;
  if (mode == LIO_NOWAIT && sig != nullptr && !kaio::posix::ParseSigevent(*sig, &list_notification)) {
    errno = EINVAL;
    return -1;
  }
  int error = 0;
  kaio::posix::State* s = kaio::posix::GetState(&error);
  if (s == nullptr) {
    errno = error;
    return -1;
  }
  LioGroup* group = nullptr;
  if (list_notification.notify != SIGEV_NONE) {
    group = new LioGroup;
    group->notification = list_notification;
  }
  bool resources = false, rejected = false, flush = false;
  // The list is one burst: submitted together on this thread, or handed over together.
  const auto route = kaio::posix::TakeLatencyBound() ? kaio::posix::SubmitRoute::kList
                                                     : kaio::posix::SubmitRoute::kHandOff;
  for (int i = 0; i < nent; ++i) {
    struct aiocb* cb = list[i];
    if (cb == nullptr || cb->aio_lio_opcode == LIO_NOP) continue;
    int err;
    if (cb->aio_lio_opcode == LIO_READ) {
      err = s->SubmitAiocb(cb, Op::kRead, group, route, &flush);
    } else if (cb->aio_lio_opcode == LIO_WRITE) {
      err = s->SubmitAiocb(cb, Op::kWrite, group, route, &flush);
    } else {
      err = s->SubmitAiocb(cb, Op::kNone, group, route, &flush);  // fails asynchronously, EINVAL
    }
    if (err == EAGAIN) {
      resources = true;
    } else if (err != 0) {
      rejected = true;
    }
  }
  if (flush) s->FlushInline();  // the whole list in one io_submit (in chunks for a device)
  // The submitter's own count: if everything finished already (or nothing was queued), the list's
  // notification is sent now.
  if (group != nullptr) s->ReleaseGroup(group);
  if (mode == LIO_NOWAIT) {
    if (resources || rejected) {
      errno = resources ? EAGAIN : EIO;
      return -1;
    }
    return 0;
  }
  if (kaio::posix::WaitAllListed(list, nent) == EINTR) {
    errno = EINTR;
    return -1;
  }
  for (int i = 0; i < nent; ++i) {
    struct aiocb* cb = list[i];
    if (cb == nullptr || cb->aio_lio_opcode == LIO_NOP) continue;
    if (kaio::posix::LoadError(cb) != 0) {
      errno = EIO;
      return -1;
    }
  }
  return 0;
}
