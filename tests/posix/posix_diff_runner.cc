// Differential test program generator and runner for POSIX AIO (GitHub issue 13).
//
// An ordinary program using glibc's <aio.h> and nothing else (no kaio headers, no kaio library), so
// the same binary runs against glibc as is and against kaio under LD_PRELOAD=libkaio_posix.so.
// posix_diff_test.sh runs each program both ways and compares the transcripts.
//
// Usage: posix_diff_runner --seed=N [--dir=SCRATCH]      (--replay=N is the same as --seed=N)
//
// From the seed it generates a random but reproducible program: 1 to 4 "scenarios", each with its
// own descriptors (regular, O_DIRECT, O_APPEND, read-only and directory fds, bad and closed fds,
// pipes, socketpairs), its own requests (aio_read, aio_write, aio_fsync, lio_listio LIO_WAIT and
// LIO_NOWAIT), probes (aio_error, aio_return, aio_cancel, aio_suspend) and notifications (SIGEV_NONE,
// SIGEV_SIGNAL with a real-time signal, SIGEV_THREAD, and invalid ones), with garbage in ignored
// fields and bad values in read ones. A scenario ends only once all its requests are finished.
//
// It prints one line per observable, "<scenario> <what> -> <result>" for a call (its return value
// and errno) and "<scenario> <what> = <value>" for data (bytes read, file contents, stream bytes,
// notifications). Only facts that do not depend on timing are recorded, so under glibc two runs of
// one seed print the same transcript:
//   - statuses are recorded after the request is known to be finished (aio_suspend loop), except
//     for reads on an empty pipe/socket, which are deterministically in progress;
//   - concurrent requests on a regular file never overlap if one of them writes, and reads never
//     cross the old end of file while a write may extend it;
//   - a stream's peer writes a message only after the reads are queued, and the next message only
//     after one more read finished, so each read gets exactly its own message (in call order, as
//     glibc does), or one atomic burst (<= PIPE_BUF) of exactly the bytes the reads ask for;
//   - cancellation only where the answer is fixed: a read queued on an empty stream (the first one
//     is in a helper thread's read(): the program waits, in /proc, until a thread of the process is
//     blocked in a read of that fd), or a finished request (AIO_ALLDONE);
//   - the real-time signal is blocked in the main thread except while it waits for notifications,
//     so no aio_suspend or LIO_WAIT of the program is ever interrupted (glibc's LIO_WAIT is not
//     safe against EINTR), and notifications are printed sorted.
// Fields named with a leading '!' in the transcript carry a deliberately odd value.
#include <aio.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

namespace {

// ------------------------------------------------------------------------------------------ basics

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t Below(uint64_t n) { return n == 0 ? 0 : Next() % n; }
  int64_t Range(int64_t lo, int64_t hi) { return lo + static_cast<int64_t>(Below(static_cast<uint64_t>(hi - lo + 1))); }
  bool Chance(int percent) { return static_cast<int>(Below(100)) < percent; }
  template <class T, size_t N>
  T Pick(const T (&a)[N]) { return a[Below(N)]; }
  void Fill(char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] = static_cast<char>(Next() >> 56);
  }

 private:
  uint64_t s_;
};

std::string g_prefix = "prog";
long g_calls = 0;

__attribute__((format(printf, 1, 2))) void Line(const char* fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  printf("%s %s\n", g_prefix.c_str(), buf);
  fflush(stdout);
}

std::string ErrName(int e) {
  if (e == 0) return "0";
  const char* n = strerrorname_np(e);
  if (n != nullptr) return n;
  return "E" + std::to_string(e);
}

// A call's result: its return value, and errno when it is -1.
std::string Rc(long rc, int err) {
  if (rc == -1) return "-1 " + ErrName(err);
  return std::to_string(rc);
}

// aio_error's result: an error number (EINPROGRESS, 0, ...), or -1 and errno.
std::string Status(int v, int err) {
  if (v == -1) return "-1 " + ErrName(err);
  return ErrName(v);
}

std::string CancelRc(int v, int err) {
  switch (v) {
    case AIO_CANCELED: return "AIO_CANCELED";
    case AIO_NOTCANCELED: return "AIO_NOTCANCELED";
    case AIO_ALLDONE: return "AIO_ALLDONE";
    default: return Rc(v, err);
  }
}

uint64_t Hash(const char* p, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  return h;
}

int64_t NowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<int64_t>(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

void SleepMs(int ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

char* Buffer(size_t n) {  // aligned for O_DIRECT, zeroed, never freed (a request may outlive a scenario)
  void* p = nullptr;
  size_t size = (n + 4095) / 4096 * 4096 + 4096;
  if (posix_memalign(&p, 4096, size) != 0) abort();
  memset(p, 0, size);
  return static_cast<char*>(p);
}

struct aiocb* NewCb() {
  auto* cb = static_cast<struct aiocb*>(calloc(1, sizeof(struct aiocb)));
  if (cb == nullptr) abort();
  return cb;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// ---------------------------------------------------------------------------------- notifications

int g_sig = 0;  // SIGRTMIN + 3
pthread_t g_main;
int g_wake[2] = {-1, -1};  // the handler and the callback write a byte: the main thread polls it

constexpr int kMaxNotes = 16384;
struct Note {
  std::atomic<int> ready{0};
  int tag = 0;
  int kind = 0;  // 1 signal, 2 thread
  int ok = 0;    // si_code/si_pid right (signal) or not the main thread (thread), status already final
};
Note g_notes[kMaxNotes];
std::atomic<int> g_note_next{0};

// tag = scenario * 100 + request index (90.. for lists): the aiocbs whose status must be final when
// the tag's notification arrives.
constexpr int kMaxTags = 1000;
struct TagCbs {
  std::atomic<int> n{0};
  struct aiocb* cbs[8] = {};
};
TagCbs g_tags[kMaxTags];

void RegisterTag(int tag, const std::vector<struct aiocb*>& cbs) {
  if (tag < 0 || tag >= kMaxTags) return;
  int n = 0;
  for (struct aiocb* cb : cbs)
    if (n < 8) g_tags[tag].cbs[n++] = cb;
  g_tags[tag].n.store(n, std::memory_order_release);
}

bool AllFinal(int tag) {
  if (tag < 0 || tag >= kMaxTags) return false;
  int n = g_tags[tag].n.load(std::memory_order_acquire);
  for (int i = 0; i < n; ++i) {
    int saved = errno;
    int e = aio_error(g_tags[tag].cbs[i]);
    errno = saved;
    if (e == EINPROGRESS) return false;
  }
  return true;
}

void RecordNote(int kind, int tag, bool ok) {
  int saved = errno;
  int i = g_note_next.fetch_add(1);
  if (i < kMaxNotes) {
    g_notes[i].tag = tag;
    g_notes[i].kind = kind;
    g_notes[i].ok = ok && AllFinal(tag);
    g_notes[i].ready.store(1, std::memory_order_release);
  }
  char c = 1;
  if (write(g_wake[1], &c, 1) < 0) {
  }
  errno = saved;
}

void OnSignal(int, siginfo_t* si, void*) {
  RecordNote(1, si->si_value.sival_int, si->si_code == SI_ASYNCIO && si->si_pid == getpid());
}

void OnThread(union sigval v) { RecordNote(2, v.sival_int, !pthread_equal(pthread_self(), g_main)); }

void BlockSig(bool block) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, g_sig);
  pthread_sigmask(block ? SIG_BLOCK : SIG_UNBLOCK, &set, nullptr);
}

struct NoteSummary {
  std::vector<int> sig, thr;
  int bad = 0;
  int total() const { return static_cast<int>(sig.size() + thr.size()); }
};

NoteSummary CountNotes(int scen) {  // scen < 0: all
  NoteSummary s;
  int n = std::min(g_note_next.load(), kMaxNotes);
  for (int i = 0; i < n; ++i) {
    if (g_notes[i].ready.load(std::memory_order_acquire) == 0) continue;
    if (scen >= 0 && g_notes[i].tag / 100 != scen) continue;
    (g_notes[i].kind == 1 ? s.sig : s.thr).push_back(g_notes[i].tag);
    if (!g_notes[i].ok) ++s.bad;
  }
  std::sort(s.sig.begin(), s.sig.end());
  std::sort(s.thr.begin(), s.thr.end());
  return s;
}

// Lets the signal in and waits, on the wake pipe, until `expected` notifications of the scenario
// arrived or `ms` passed.
NoteSummary WaitNotes(int scen, int expected, int ms) {
  int64_t deadline = NowMs() + ms;
  BlockSig(false);
  NoteSummary s;
  for (;;) {
    s = CountNotes(scen);
    int64_t left = deadline - NowMs();
    if (s.total() >= expected || left <= 0) break;
    struct pollfd p = {g_wake[0], POLLIN, 0};
    poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 100)));
    char drain[64];
    while (read(g_wake[0], drain, sizeof(drain)) > 0) {
    }
  }
  BlockSig(true);
  return s;
}

std::string List(const std::vector<int>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out + "]";
}

enum Ev { kEvNone, kEvSignal, kEvThread, kEvBadNotify, kEvZeroSigno, kEvBadSigno };
const char* const kEvName[] = {"none", "signal", "thread", "!badnotify", "signo0", "!badsigno"};

Ev PickEv(Rng& r) {
  int x = static_cast<int>(r.Below(100));
  if (x < 40) return kEvNone;
  if (x < 65) return kEvSignal;
  if (x < 90) return kEvThread;
  if (x < 94) return kEvBadNotify;
  if (x < 97) return kEvZeroSigno;
  return kEvBadSigno;
}

bool Notifies(Ev e) { return e == kEvSignal || e == kEvThread; }

void SetEv(struct sigevent* ev, Ev kind, int tag) {
  memset(ev, 0, sizeof(*ev));
  ev->sigev_value.sival_int = tag;
  switch (kind) {
    case kEvNone: ev->sigev_notify = SIGEV_NONE; break;
    case kEvSignal: ev->sigev_notify = SIGEV_SIGNAL; ev->sigev_signo = g_sig; break;
    case kEvThread:
      ev->sigev_notify = SIGEV_THREAD;
      ev->sigev_notify_function = OnThread;
      break;
    case kEvBadNotify: ev->sigev_notify = 77; break;
    case kEvZeroSigno: ev->sigev_notify = SIGEV_SIGNAL; ev->sigev_signo = 0; break;
    case kEvBadSigno: ev->sigev_notify = SIGEV_SIGNAL; ev->sigev_signo = 1000; break;
  }
}

// ------------------------------------------------------------------------------------ requests

enum Op { kRead, kWrite, kFsync };
const char* const kOpName[] = {"aio_read", "aio_write", "aio_fsync"};

struct Req {
  struct aiocb* cb = nullptr;
  Op op = kRead;
  int idx = 0;
  int tag = 0;
  Ev ev = kEvNone;
  int fsync_op = O_SYNC;
  std::string name;    // "aio_read#3 fd=pipe.r"
  std::string params;  // "n=100 off=0 ..."
  bool submitted = false;
  bool consumer = false;  // a stream read expected to take bytes
};

struct Scen {
  int id = 0;
  Rng* rng = nullptr;
  std::string dir;
  int expected_notes = 0;
  int next_idx = 0;
  std::vector<Req> reqs;
};

Req& NewReq(Scen& s, Op op, const std::string& fdname, int fd) {
  Req q;
  q.cb = NewCb();
  q.op = op;
  q.idx = s.next_idx++;
  q.tag = s.id * 100 + q.idx;
  q.name = std::string(kOpName[op]) + "#" + std::to_string(q.idx) + " fd=" + fdname;
  q.cb->aio_fildes = fd;
  s.reqs.push_back(q);
  return s.reqs.back();
}

void SetReqEv(Req& q, Ev ev) {
  q.ev = ev;
  SetEv(&q.cb->aio_sigevent, ev, q.tag);
}

// One aio_read/aio_write/aio_fsync call.
void Submit(Scen& s, Req& q) {
  RegisterTag(q.tag, {q.cb});
  errno = 0;
  int rc = q.op == kRead ? aio_read(q.cb) : q.op == kWrite ? aio_write(q.cb) : aio_fsync(q.fsync_op, q.cb);
  int e = errno;
  ++g_calls;
  Line("%s %s ev=%s -> %s", q.name.c_str(), q.params.c_str(), kEvName[q.ev], Rc(rc, e).c_str());
  q.submitted = rc == 0;
  if (q.submitted && Notifies(q.ev)) ++s.expected_notes;
}

// Waits (aio_suspend with short timeouts, until a deadline) for every listed request to finish.
bool WaitDone(const std::vector<struct aiocb*>& cbs, int ms) {
  int64_t deadline = NowMs() + ms;
  for (;;) {
    std::vector<const struct aiocb*> pending;
    for (struct aiocb* cb : cbs)
      if (aio_error(cb) == EINPROGRESS) pending.push_back(cb);
    if (pending.empty()) return true;
    if (NowMs() >= deadline) return false;
    struct timespec ts = {0, 20 * 1000 * 1000};
    aio_suspend(pending.data(), static_cast<int>(pending.size()), &ts);
  }
}

std::vector<struct aiocb*> Submitted(const Scen& s) {
  std::vector<struct aiocb*> v;
  for (const Req& q : s.reqs)
    if (q.submitted) v.push_back(q.cb);
  return v;
}

// Waits for all of the scenario's submitted requests; a request still in progress after `ms` is a
// finding (its line says so).
bool WaitScenario(Scen& s, int ms) {
  std::vector<struct aiocb*> v = Submitted(s);
  if (WaitDone(v, ms)) return true;
  for (const Req& q : s.reqs)
    if (q.submitted && aio_error(q.cb) == EINPROGRESS) Line("%s still in progress after %d ms = HANG", q.name.c_str(), ms);
  return false;
}

void RecordFinal(Req& q, bool twice) {
  errno = 0;
  int e = aio_error(q.cb);
  int err = errno;
  ++g_calls;
  Line("%s aio_error -> %s", q.name.c_str(), Status(e, err).c_str());
  if (e == EINPROGRESS) return;  // already reported as a hang; aio_return would be meaningless
  for (int i = 0; i < (twice ? 2 : 1); ++i) {
    errno = 0;
    ssize_t r = aio_return(q.cb);
    err = errno;
    ++g_calls;
    Line("%s aio_return%s -> %s", q.name.c_str(), i ? "(again)" : "", Rc(r, err).c_str());
    if (i == 0 && q.op == kRead && r > 0 && static_cast<size_t>(r) <= q.cb->aio_nbytes) {
      const char* p = static_cast<const char*>(const_cast<const void*>(q.cb->aio_buf));
      Line("%s data = len=%zd hash=%016llx", q.name.c_str(), r,
           static_cast<unsigned long long>(Hash(p, static_cast<size_t>(r))));
    }
  }
}

void RecordAll(Scen& s) {
  for (Req& q : s.reqs)
    if (q.submitted) RecordFinal(q, s.rng->Chance(15));
}

void RecordCancel(const std::string& what, int fd, struct aiocb* cb) {
  errno = 0;
  int rc = aio_cancel(fd, cb);
  int e = errno;
  ++g_calls;
  Line("aio_cancel %s -> %s", what.c_str(), CancelRc(rc, e).c_str());
}

void RecordFile(const std::string& name, const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY);
  if (fd < 0) {
    Line("file fd=%s = unreadable %s", name.c_str(), ErrName(errno).c_str());
    return;
  }
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof(buf));
    if (r <= 0) break;
    data.append(buf, static_cast<size_t>(r));
  }
  close(fd);
  Line("file fd=%s = size=%zu hash=%016llx", name.c_str(), data.size(),
       static_cast<unsigned long long>(Hash(data.data(), data.size())));
}

// A list call. Entries may be NULL or LIO_NOP; `reqs` are the real entries (for notifications).
// Returns whether the entries may have been started (the mode is valid).
bool Listio(Scen& s, int mode, std::vector<struct aiocb*>& list, int nent, Ev list_ev, const std::string& desc,
            const std::vector<Req*>& reqs, int list_tag) {
  struct sigevent sev;
  SetEv(&sev, list_ev, list_tag);
  std::vector<struct aiocb*> real;
  for (Req* q : reqs) {
    RegisterTag(q->tag, {q->cb});
    real.push_back(q->cb);
  }
  RegisterTag(list_tag, real);
  bool with_sev = list_ev != kEvNone || s.rng->Chance(50);
  errno = 0;
  int rc = lio_listio(mode, list.data(), nent, with_sev ? &sev : nullptr);
  int e = errno;
  ++g_calls;
  const char* mode_name = mode == LIO_WAIT ? "LIO_WAIT" : mode == LIO_NOWAIT ? "LIO_NOWAIT" : "!badmode";
  Line("lio_listio#%d mode=%s nent=%d %s sev=%s -> %s", list_tag % 100, mode_name, nent, desc.c_str(),
       with_sev ? kEvName[list_ev] : "NULL", Rc(rc, e).c_str());
  // Whatever it returns, a list with a valid mode may have started some entries: glibc enqueues
  // each entry on its own, and one refused at enqueue (a bad aio_reqprio) makes it return -1 with
  // that entry's errno while the others run. So every entry is waited for and recorded.
  if (mode != LIO_WAIT && mode != LIO_NOWAIT) return false;
  if (mode == LIO_NOWAIT && with_sev && Notifies(list_ev)) ++s.expected_notes;
  for (Req* q : reqs) {
    q->submitted = true;
    // glibc refuses an entry with a bad priority at enqueue (no notification); others are notified.
    if (Notifies(q->ev) && q->cb->aio_reqprio >= 0 && q->cb->aio_reqprio <= AIO_PRIO_DELTA_MAX) ++s.expected_notes;
  }
  return true;
}

// -------------------------------------------------------------------------------- regular files

enum FileKind { kReg, kDirect, kAppend, kAppendWo, kRdonly, kDir, kBadFd, kClosedFd };
const char* const kFileKindName[] = {"reg", "direct", "append", "append.wo", "rdonly", "dir", "badfd", "closedfd"};

constexpr int kClosedFdNumber = 900;  // above anything the process opens, so never reused

int ClosedFd() {
  close(kClosedFdNumber);
  return kClosedFdNumber;
}

struct Extent {
  int64_t off, end;
  bool write;
};

// Batches of reads, writes and syncs on one descriptor, all concurrent, none conflicting.
void FileBatch(Scen& s) {
  Rng& r = *s.rng;
  FileKind kind = static_cast<FileKind>(r.Pick({0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7}));
  const int64_t sizes[] = {0, 1, 100, 4096, 10000, 65536, 200000};
  int64_t size = r.Pick(sizes);
  if (kind == kDirect) size = (size + 4095) / 4096 * 4096;
  std::string path = s.dir + "/f" + std::to_string(s.id);
  {
    int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_WRONLY, 0644);
    std::string content(static_cast<size_t>(size), '\0');
    r.Fill(content.data(), content.size());
    if (fd < 0 || !WriteAll(fd, content.data(), content.size())) {
      Line("setup failed: %s", ErrName(errno).c_str());
      exit(2);
    }
    close(fd);
  }
  int fd = -1;
  switch (kind) {
    case kReg: fd = open(path.c_str(), O_RDWR); break;
    case kDirect:
      fd = open(path.c_str(), O_RDWR | O_DIRECT);
      if (fd < 0 && errno == EINVAL) {
        Line("O_DIRECT open = EINVAL (unsupported here): buffered instead");
        kind = kReg;
        fd = open(path.c_str(), O_RDWR);
      }
      break;
    case kAppend: fd = open(path.c_str(), O_RDWR | O_APPEND); break;
    case kAppendWo: fd = open(path.c_str(), O_WRONLY | O_APPEND); break;
    case kRdonly: fd = open(path.c_str(), O_RDONLY); break;
    case kDir: {
      std::string d = s.dir + "/d" + std::to_string(s.id);
      mkdir(d.c_str(), 0755);
      fd = open(d.c_str(), O_RDONLY | O_DIRECTORY);
      break;
    }
    case kBadFd: fd = r.Chance(50) ? -1 : 1000 + static_cast<int>(r.Below(1000)); break;
    case kClosedFd: fd = ClosedFd(); break;
  }
  if (fd < 0 && kind != kBadFd) {
    Line("setup open failed: %s", ErrName(errno).c_str());
    exit(2);
  }
  const std::string fdname = kFileKindName[kind];
  const bool append = kind == kAppend || kind == kAppendWo;
  const bool direct = kind == kDirect;
  const bool extend = append || r.Chance(40);  // writes may grow the file: reads stay below `size`
  Line("file fd=%s size=%lld extend=%d", fdname.c_str(), static_cast<long long>(size), extend ? 1 : 0);

  // Generate the requests.
  std::vector<Extent> used;
  auto conflicts = [&](int64_t off, int64_t end, bool write) {
    for (const Extent& x : used)
      if ((write || x.write) && off < x.end && x.off < end) return true;
    return false;
  };
  int n = static_cast<int>(r.Range(1, 8));
  std::vector<int> mine;  // indexes into s.reqs
  for (int i = 0; i < n; ++i) {
    int x = static_cast<int>(r.Below(100));
    Op op = x < 45 ? kRead : x < 85 ? kWrite : kFsync;
    Req& q = NewReq(s, op, fdname, fd);
    struct aiocb* cb = q.cb;
    std::string params;
    if (op == kFsync) {
      q.fsync_op = r.Chance(50) ? O_SYNC : O_DSYNC;
      params = q.fsync_op == O_SYNC ? "op=O_SYNC" : "op=O_DSYNC";
      if (r.Chance(8)) {
        q.fsync_op = r.Chance(50) ? 0 : 0x7777;
        params = "!op=" + std::to_string(q.fsync_op);
      }
      if (r.Chance(40)) {  // fields aio_fsync ignores
        cb->aio_reqprio = static_cast<int>(r.Next());
        cb->aio_buf = reinterpret_cast<void*>(static_cast<uintptr_t>(r.Pick({uintptr_t{0x10}, uintptr_t{0xdeadbeef}, uintptr_t{0}})));
        cb->aio_nbytes = static_cast<size_t>(r.Next() >> 8);
        cb->aio_offset = static_cast<off_t>(r.Next() >> 4) * (r.Chance(30) ? -1 : 1);
        cb->aio_lio_opcode = static_cast<int>(r.Next());
        params += " !prio=" + std::to_string(cb->aio_reqprio) + " !junk";
      }
    } else {
      const int64_t lens[] = {0, 1, 13, 512, 4096, 8192, 65536, 100000};
      const int64_t dlens[] = {4096, 8192, 65536};
      int64_t len = direct ? r.Pick(dlens) : r.Pick(lens);
      bool odd_len = false;
      if (direct && r.Chance(8)) {
        len = 100;
        odd_len = true;
      }
      int64_t off = 0;
      bool negative = r.Chance(5);
      bool placed = false;
      if (negative) {
        off = r.Chance(50) ? -1 : -4096;
        placed = true;
      } else if (op == kWrite && append) {
        off = r.Chance(60) ? 0 : r.Range(0, 1 << 20);  // ignored by an O_APPEND write
        placed = true;
      } else {
        for (int attempt = 0; attempt < 12 && !placed; ++attempt) {
          off = r.Range(0, size + 16384);
          if (direct && !r.Chance(8)) off = off / 4096 * 4096;
          int64_t end = off + len;
          if (extend && op == kRead && end > size) continue;
          if (!extend && op == kWrite && end > size) continue;
          if (conflicts(off, end, op == kWrite)) continue;
          placed = true;
        }
        if (placed) used.push_back({off, off + len, op == kWrite});
      }
      if (!placed) {  // no room: make it a zero-length read at 0
        op = kRead;
        q.op = kRead;
        q.name = std::string(kOpName[kRead]) + "#" + std::to_string(q.idx) + " fd=" + fdname;
        len = 0;
        off = 0;
      }
      char* buf = Buffer(static_cast<size_t>(len));
      if (op == kWrite) r.Fill(buf, static_cast<size_t>(len));
      cb->aio_buf = buf;
      cb->aio_nbytes = static_cast<size_t>(len);
      cb->aio_offset = off;
      params = "n=" + std::to_string(len) + (odd_len ? "!" : "") + (negative ? " !off=" : " off=") + std::to_string(off);
      int prio = 0;
      if (r.Chance(10)) prio = static_cast<int>(r.Range(1, AIO_PRIO_DELTA_MAX));
      if (r.Chance(4)) prio = r.Pick({-1, AIO_PRIO_DELTA_MAX + 1, 100000});
      // glibc runs one fd's requests by priority, so O_APPEND writes of different priorities land
      // out of call order there; POSIX wants call order and kaio keeps it (docs/posix.md). A valid
      // non-zero priority on an append would only show that choice.
      if (append && op == kWrite && prio > 0 && prio <= AIO_PRIO_DELTA_MAX) prio = 0;
      cb->aio_reqprio = prio;
      if (prio < 0 || prio > AIO_PRIO_DELTA_MAX) params += " !prio=" + std::to_string(prio);
      else if (prio) params += " prio=" + std::to_string(prio);
    }
    q.params = params;
    SetReqEv(q, PickEv(r));
    mine.push_back(static_cast<int>(s.reqs.size() - 1));
  }

  // Submit: single calls, or runs of reads/writes as one lio_listio.
  for (size_t i = 0; i < mine.size();) {
    Req& first = s.reqs[static_cast<size_t>(mine[i])];
    if (first.op != kFsync && r.Chance(30)) {
      std::vector<Req*> group;
      size_t j = i;
      size_t want = static_cast<size_t>(r.Range(1, 5));
      while (j < mine.size() && group.size() < want && s.reqs[static_cast<size_t>(mine[j])].op != kFsync)
        group.push_back(&s.reqs[static_cast<size_t>(mine[j++])]);
      std::vector<struct aiocb*> list;
      std::string desc = "[";
      bool bad_opcode_used = false;
      for (Req* q : group) {
        if (r.Chance(15)) {
          list.push_back(nullptr);
          desc += "NULL ";
        }
        if (r.Chance(15)) {
          struct aiocb* nop = NewCb();
          nop->aio_lio_opcode = LIO_NOP;
          nop->aio_fildes = r.Chance(50) ? fd : -1;
          list.push_back(nop);
          desc += "NOP ";
        }
        q->cb->aio_lio_opcode = q->op == kRead ? LIO_READ : LIO_WRITE;
        if (!bad_opcode_used && r.Chance(6)) {
          bad_opcode_used = true;
          q->cb->aio_lio_opcode = r.Pick({7, -1, 100});
          q->params += " !opcode=" + std::to_string(q->cb->aio_lio_opcode);
        }
        list.push_back(q->cb);
        desc += std::to_string(q->idx) + ":" + (q->op == kRead ? "R" : "W");
        if (q->cb->aio_lio_opcode != LIO_READ && q->cb->aio_lio_opcode != LIO_WRITE) desc += "!opcode";
        if (q->cb->aio_reqprio < 0 || q->cb->aio_reqprio > AIO_PRIO_DELTA_MAX) desc += "!prio";
        if (q->cb->aio_offset < 0) desc += "!off";
        if (q->ev == kEvBadNotify || q->ev == kEvBadSigno) desc += "!ev";
        desc += " ";
        Line("%s %s ev=%s (in list %d)", q->name.c_str(), q->params.c_str(), kEvName[q->ev], first.idx + 90);
      }
      desc.back() = ']';
      int mode = r.Chance(40) ? LIO_WAIT : LIO_NOWAIT;
      Listio(s, mode, list, static_cast<int>(list.size()), mode == LIO_NOWAIT ? PickEv(r) : kEvNone, desc, group,
             s.id * 100 + 90 + (first.idx % 10));
      i = j;
    } else {
      if (first.op != kFsync && r.Chance(30)) {  // aio_read and aio_write ignore aio_lio_opcode
        first.cb->aio_lio_opcode = static_cast<int>(r.Next());
        first.params += " !opcode=junk";
      }
      Submit(s, first);
      ++i;
    }
  }

  WaitScenario(s, 10000);
  RecordAll(s);
  // A finished request: AIO_ALLDONE, for it and for its fd.
  if (!s.reqs.empty() && r.Chance(30)) {
    Req& q = s.reqs[r.Below(s.reqs.size())];
    if (q.submitted) RecordCancel("(" + q.name + ") finished", fd, q.cb);
  }
  if (r.Chance(20)) RecordCancel("(fd=" + fdname + ", NULL) all finished", fd, nullptr);
  if (kind != kDir && kind != kBadFd && kind != kClosedFd) RecordFile(fdname, path);
  if (fd >= 0 && fd != kClosedFdNumber && kind != kBadFd && WaitDone(Submitted(s), 0)) close(fd);
}

// ---------------------------------------------------------------------------------- streams

bool ThreadBlockedReading(int fd) {
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return false;
  bool found = false;
  while (struct dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char path[320], buf[256];
    snprintf(path, sizeof(path), "/proc/self/task/%s/syscall", e->d_name);
    int f = open(path, O_RDONLY);
    if (f < 0) continue;
    ssize_t n = read(f, buf, sizeof(buf) - 1);
    close(f);
    if (n <= 0) continue;
    buf[n] = '\0';
    long nr = -1;
    unsigned long arg0 = 0;
    if (sscanf(buf, "%ld %lx", &nr, &arg0) != 2) continue;
    if ((nr == SYS_read || nr == SYS_pread64 || nr == SYS_readv || nr == SYS_preadv || nr == SYS_preadv2 ||
         nr == SYS_recvfrom || nr == SYS_recvmsg) &&
        arg0 == static_cast<unsigned long>(fd)) {
      found = true;
      break;
    }
    // An implementation that waits for readiness instead of blocking in the read (kaio's streams)
    // has a thread in epoll_wait once its request waits; glibc's AIO never calls it. Only a timing
    // aid, like the check above: nothing about it is recorded.
    if (nr == SYS_epoll_wait || nr == SYS_epoll_pwait || nr == SYS_epoll_pwait2) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

// Waits until some thread of the process is blocked in a read of fd (the implementation started
// the first queued read), or `ms` passed. Not recorded: only makes glibc's answer to aio_cancel
// deterministic (its request is "running" once a helper thread took it).
void WaitBlockedReader(int fd, int ms) {
  int64_t deadline = NowMs() + ms;
  while (!ThreadBlockedReading(fd) && NowMs() < deadline) SleepMs(1);
}

struct Helper {
  int fd;
  std::string msg;
  int delay_ms;
};

void* HelperMain(void* arg) {
  auto* h = static_cast<Helper*>(arg);
  // The delay only makes it likely that the main thread is already inside aio_suspend; the
  // transcript is the same either way under glibc (the read completes, aio_suspend returns 0).
  SleepMs(h->delay_ms);
  WriteAll(h->fd, h->msg.data(), h->msg.size());
  return nullptr;
}

int CountDone(const std::vector<Req*>& v) {
  int n = 0;
  for (Req* q : v)
    if (aio_error(q->cb) != EINPROGRESS) ++n;
  return n;
}

// Waits until at least `target` of v are finished, or `ms` passed.
void WaitCount(const std::vector<Req*>& v, int target, int ms) {
  int64_t deadline = NowMs() + ms;
  while (CountDone(v) < target && NowMs() < deadline) {
    std::vector<const struct aiocb*> left;
    for (Req* q : v)
      if (aio_error(q->cb) == EINPROGRESS) left.push_back(q->cb);
    struct timespec ts = {0, 20 * 1000 * 1000};
    aio_suspend(left.data(), static_cast<int>(left.size()), &ts);
  }
}

// Reads queued on an empty pipe or socket, probed while pending, then fed.
void StreamReads(Scen& s) {
  Rng& r = *s.rng;
  bool sock = r.Chance(50);
  int fds[2];
  if ((sock ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds)) != 0) exit(2);
  int rfd = fds[0], wfd = fds[1];
  const std::string fdname = sock ? "sock" : "pipe.r";
  bool burst = r.Chance(40);
  int n = static_cast<int>(r.Range(1, 4));
  Line("stream reads fd=%s n=%d feed=%s", fdname.c_str(), n, burst ? "burst" : "stepwise");
  std::vector<Req*> reads;
  for (int i = 0; i < n; ++i) {
    Req& q = NewReq(s, kRead, fdname, rfd);
    const int64_t lens[] = {1, 7, 100, 1000, 4096};
    const int64_t blens[] = {1, 7, 100, 1000};
    int64_t len = burst ? r.Pick(blens) : r.Pick(lens);
    char* buf = Buffer(static_cast<size_t>(len));
    q.cb->aio_buf = buf;
    q.cb->aio_nbytes = static_cast<size_t>(len);
    q.consumer = true;
    std::string offs = "off=0";
    if (r.Chance(25)) {  // ignored on a stream
      q.cb->aio_offset = r.Range(1, 1 << 30);
      offs = "!off=" + std::to_string(q.cb->aio_offset);
    } else if (i > 0 && r.Chance(6)) {  // pread's EINVAL: not a consumer (never first, see header)
      q.cb->aio_offset = -5;
      offs = "!off=-5";
      q.consumer = false;
    }
    q.params = "n=" + std::to_string(len) + " " + offs;
    SetReqEv(q, PickEv(r));
  }
  for (Req& q : s.reqs) reads.push_back(&q);
  if (r.Chance(70)) {
    for (Req* q : reads) Submit(s, *q);
  } else {
    std::vector<struct aiocb*> list;
    std::string desc = "[";
    for (Req* q : reads) {
      q->cb->aio_lio_opcode = LIO_READ;
      list.push_back(q->cb);
      desc += std::to_string(q->idx) + ":R ";
      Line("%s %s ev=%s (in list)", q->name.c_str(), q->params.c_str(), kEvName[q->ev]);
    }
    desc.back() = ']';
    Listio(s, LIO_NOWAIT, list, static_cast<int>(list.size()), PickEv(r), desc, reads, s.id * 100 + 90);
  }
  std::vector<Req*> consumers;
  for (Req* q : reads)
    if (q->submitted && q->consumer) consumers.push_back(q);

  // Probes while every consumer is deterministically pending (nothing was written yet).
  if (!consumers.empty() && r.Chance(40)) {
    for (Req* q : consumers) {
      errno = 0;
      int e = aio_error(q->cb);
      int err = errno;
      ++g_calls;
      Line("%s aio_error(pending) -> %s", q->name.c_str(), Status(e, err).c_str());
    }
  }
  // (No aio_return while pending: POSIX leaves it undefined, and glibc's answer is not even
  // deterministic: its helper stores pread's -1/ESPIPE in __return_value before it falls back to
  // read(), so it is 0 or -1 depending on timing.)
  if (!consumers.empty() && r.Chance(25)) {
    std::vector<const struct aiocb*> list;
    for (Req* q : consumers) list.push_back(q->cb);
    bool with_null = r.Chance(30);
    if (with_null) list.insert(list.begin(), nullptr);
    struct timespec ts = {0, r.Chance(50) ? 0 : 2000000};
    errno = 0;
    int rc = aio_suspend(list.data(), static_cast<int>(list.size()), &ts);
    int err = errno;
    ++g_calls;
    Line("aio_suspend(pending reads%s, timeout %ld ns) -> %s", with_null ? " and NULL" : "", ts.tv_nsec,
         Rc(rc, err).c_str());
  }
  if (!consumers.empty() && r.Chance(35)) {
    WaitBlockedReader(rfd, 2000);
    if (r.Chance(50)) {
      RecordCancel("(fd=" + fdname + ", NULL) reads queued on an empty stream", rfd, nullptr);
    } else {
      size_t ci = r.Below(consumers.size());
      Req* q = consumers[ci];
      RecordCancel("(" + q->name + ") read " + std::to_string(ci + 1) + " of " + std::to_string(consumers.size()) +
                       " queued on an empty stream",
                   rfd, q->cb);
    }
    for (Req* q : consumers) {
      errno = 0;
      int e = aio_error(q->cb);
      int err = errno;
      ++g_calls;
      Line("%s aio_error(after cancel) -> %s", q->name.c_str(), Status(e, err).c_str());
    }
  }
  // The reads still pending now take the messages, in call order.
  std::vector<Req*> pending;
  for (Req* q : consumers)
    if (aio_error(q->cb) == EINPROGRESS) pending.push_back(q);

  if (burst) {
    size_t total = 0;
    for (Req* q : pending) total += q->cb->aio_nbytes;
    std::string msg(total, '\0');
    r.Fill(msg.data(), msg.size());
    if (total > 0) WriteAll(wfd, msg.data(), msg.size());
  } else {
    size_t k = 0;
    if (!pending.empty() && r.Chance(20)) {
      // aio_suspend while a helper thread feeds the first read: odd and huge timeouts.
      struct timespec ts = {0, 0};
      struct timespec* tsp = &ts;
      std::string what;
      switch (r.Below(6)) {
        case 0: ts.tv_sec = 10000000000L; what = "!tv_sec=1e10"; break;
        case 1: ts.tv_sec = LONG_MAX; what = "!tv_sec=LONG_MAX"; break;
        case 2: ts.tv_sec = 5; ts.tv_nsec = -1; what = "!tv_nsec=-1"; break;
        case 3: ts.tv_sec = 5; ts.tv_nsec = 1000000000; what = "!tv_nsec=1e9"; break;
        case 4: ts.tv_sec = -1; what = "!tv_sec=-1"; break;
        default: tsp = nullptr; what = "NULL"; break;
      }
      Helper h{wfd, std::string(static_cast<size_t>(r.Range(1, static_cast<int64_t>(pending[0]->cb->aio_nbytes))), 'h'), 100};
      r.Fill(h.msg.data(), h.msg.size());
      pthread_t t;
      pthread_create(&t, nullptr, HelperMain, &h);
      std::vector<const struct aiocb*> list;
      for (Req* q : pending) list.push_back(q->cb);
      errno = 0;
      int rc = aio_suspend(list.data(), static_cast<int>(list.size()), tsp);
      int err = errno;
      ++g_calls;
      Line("aio_suspend(pending reads, timeout %s, a thread writes one message) -> %s", what.c_str(), Rc(rc, err).c_str());
      pthread_join(t, nullptr);
      WaitCount(pending, 1, 3000);
      k = 1;
    }
    for (; k < pending.size(); ++k) {
      std::string msg(static_cast<size_t>(r.Range(1, static_cast<int64_t>(pending[k]->cb->aio_nbytes))), '\0');
      r.Fill(msg.data(), msg.size());
      WriteAll(wfd, msg.data(), msg.size());
      // Wait until one more of the pending reads finished (the next one, under glibc).
      WaitCount(pending, static_cast<int>(k + 1), 3000);
      if (CountDone(pending) < static_cast<int>(k + 1))
        Line("stepwise feed: after message %zu only %d reads finished = STUCK", k, CountDone(pending));
    }
  }
  // Whatever is still waiting gets end of file.
  if (!WaitDone(Submitted(s), 3000)) {
    Line("reads still pending after feeding: closing the write end");
    if (sock) {
      shutdown(wfd, SHUT_WR);
    } else {
      close(wfd);
      wfd = -1;
    }
  }
  bool done = WaitScenario(s, 5000);
  RecordAll(s);
  if (r.Chance(20) && !s.reqs.empty() && s.reqs[0].submitted)
    RecordCancel("(" + s.reqs[0].name + ") finished", rfd, s.reqs[0].cb);
  if (done) {
    close(rfd);
    if (wfd >= 0) close(wfd);
  }
}

// aio_writes to a pipe or socket (up to 256 KiB each); the peer reads everything back in order.
void StreamWrites(Scen& s) {
  Rng& r = *s.rng;
  bool sock = r.Chance(50);
  int fds[2];
  if ((sock ? socketpair(AF_UNIX, SOCK_STREAM, 0, fds) : pipe(fds)) != 0) exit(2);
  int rfd = fds[0], wfd = fds[1];
  const std::string fdname = sock ? "sock" : "pipe.w";
  int n = static_cast<int>(r.Range(1, 4));
  Line("stream writes fd=%s n=%d", fdname.c_str(), n);
  std::vector<Req*> writes;
  size_t total = 0;
  for (int i = 0; i < n; ++i) {
    Req& q = NewReq(s, kWrite, fdname, wfd);
    int x = static_cast<int>(r.Below(100));
    int64_t len = x < 40 ? r.Range(1, 4096) : x < 65 ? r.Range(4097, 65535) : r.Range(65536, 262144);
    char* buf = Buffer(static_cast<size_t>(len));
    // Each byte says which write it came from (high 3 bits) and where in it (low 5 bits).
    for (int64_t j = 0; j < len; ++j) buf[j] = static_cast<char>((q.idx << 5) | ((j * 7) & 31));
    q.cb->aio_buf = buf;
    q.cb->aio_nbytes = static_cast<size_t>(len);
    total += static_cast<size_t>(len);
    std::string offs = "off=0";
    if (r.Chance(25)) {
      q.cb->aio_offset = r.Range(1, 1 << 30);
      offs = "!off=" + std::to_string(q.cb->aio_offset);
    }
    q.params = "n=" + std::to_string(len) + " " + offs;
    SetReqEv(q, PickEv(r));
  }
  for (Req& q : s.reqs) writes.push_back(&q);
  if (r.Chance(70)) {
    for (Req* q : writes) Submit(s, *q);
  } else {
    std::vector<struct aiocb*> list;
    std::string desc = "[";
    for (Req* q : writes) {
      q->cb->aio_lio_opcode = LIO_WRITE;
      list.push_back(q->cb);
      desc += std::to_string(q->idx) + ":W ";
      Line("%s %s ev=%s (in list)", q->name.c_str(), q->params.c_str(), kEvName[q->ev]);
    }
    desc.back() = ']';
    int mode = total <= 16384 && r.Chance(50) ? LIO_WAIT : LIO_NOWAIT;  // LIO_WAIT: it must fit the pipe
    Listio(s, mode, list, static_cast<int>(list.size()), mode == LIO_NOWAIT ? PickEv(r) : kEvNone, desc, writes,
           s.id * 100 + 90);
  }
  if (r.Chance(10)) {  // fsync on a pipe/socket: queued behind the writes in glibc
    Req& q = NewReq(s, kFsync, fdname, wfd);
    q.fsync_op = O_SYNC;
    q.params = "op=O_SYNC";
    SetReqEv(q, PickEv(r));
    Submit(s, q);
  }
  size_t expect = 0;
  for (Req* q : writes)
    if (q->submitted) expect += q->cb->aio_nbytes;
  std::string got;
  int64_t deadline = NowMs() + 5000;
  char buf[65536];
  while (got.size() < expect && NowMs() < deadline) {
    struct pollfd p = {rfd, POLLIN, 0};
    if (poll(&p, 1, 100) <= 0) continue;
    ssize_t k = read(rfd, buf, sizeof(buf));
    if (k <= 0) break;
    got.append(buf, static_cast<size_t>(k));
  }
  // Which write each run of bytes came from, and whether each byte is the right one of its write.
  std::string runs;
  int nruns = 0;
  bool misplaced = false;
  std::vector<int64_t> pos(8, 0);
  for (size_t i = 0; i < got.size();) {
    int w = static_cast<unsigned char>(got[i]) >> 5;
    size_t j = i;
    while (j < got.size() && (static_cast<unsigned char>(got[j]) >> 5) == w) {
      if ((static_cast<unsigned char>(got[j]) & 31) != ((pos[static_cast<size_t>(w)] * 7) & 31)) misplaced = true;
      ++pos[static_cast<size_t>(w)];
      ++j;
    }
    if (++nruns <= 12) runs += (runs.empty() ? "" : ",") + std::to_string(w) + ":" + std::to_string(j - i);
    i = j;
  }
  if (nruns > 12) runs += ",... (" + std::to_string(nruns) + " runs)";
  Line("stream fd=%s received = len=%zu hash=%016llx runs=[%s]%s", fdname.c_str(), got.size(),
       static_cast<unsigned long long>(Hash(got.data(), got.size())), runs.c_str(), misplaced ? " MISPLACED" : "");
  bool done = WaitScenario(s, 5000);
  RecordAll(s);
  if (done) {
    close(rfd);
    close(wfd);
  }
}

// ------------------------------------------------------------------------------- list edges

void ListEdge(Scen& s) {
  Rng& r = *s.rng;
  std::string path = s.dir + "/l" + std::to_string(s.id);
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0644);
  std::string content(8192, '\0');
  r.Fill(content.data(), content.size());
  if (fd < 0 || !WriteAll(fd, content.data(), content.size())) exit(2);
  int variant = static_cast<int>(r.Below(6));
  int mode = r.Chance(45) ? LIO_WAIT : LIO_NOWAIT;
  std::vector<Req*> reqs;
  auto add_read = [&](int64_t off, int64_t len) {
    Req& q = NewReq(s, kRead, "reg", fd);
    q.cb->aio_buf = Buffer(static_cast<size_t>(len));
    q.cb->aio_nbytes = static_cast<size_t>(len);
    q.cb->aio_offset = off;
    q.cb->aio_lio_opcode = LIO_READ;
    q.params = "n=" + std::to_string(len) + " off=" + std::to_string(off);
    SetReqEv(q, PickEv(r));
    return &q;
  };
  s.reqs.reserve(16);  // pointers into s.reqs stay valid
  int nreal = static_cast<int>(r.Range(1, 3));
  for (int i = 0; i < nreal; ++i) reqs.push_back(add_read(r.Range(0, 9000), r.Pick({1, 100, 4096})));
  std::vector<struct aiocb*> list;
  std::string desc;
  int nent = 0;
  switch (variant) {
    case 0: {  // a bad mode
      mode = r.Pick({2, -1, 99});
      for (Req* q : reqs) list.push_back(q->cb);
      desc = "[reads]";
      break;
    }
    case 1: {  // nothing to do
      reqs.clear();
      list.push_back(nullptr);
      if (r.Chance(50)) {
        struct aiocb* nop = NewCb();
        nop->aio_lio_opcode = LIO_NOP;
        list.push_back(nop);
        desc = "[NULL NOP]";
      } else {
        desc = "[NULL]";
      }
      nent = r.Chance(50) ? 0 : static_cast<int>(list.size());
      if (nent == 0) desc = "[] (nent 0)";
      break;
    }
    case 2: {  // a long list, mostly NULL and LIO_NOP (glibc has no AIO_LISTIO_MAX)
      int len = r.Pick({64, 1024, 5000});
      list.assign(static_cast<size_t>(len), nullptr);
      struct aiocb* nop = NewCb();
      nop->aio_lio_opcode = LIO_NOP;
      if (r.Chance(50))
        for (auto& e : list) e = nop;
      for (Req* q : reqs) list[r.Below(list.size())] = q->cb;  // may overwrite one another: see below
      std::vector<Req*> kept;
      for (Req* q : reqs)
        if (std::find(list.begin(), list.end(), q->cb) != list.end()) kept.push_back(q);
      reqs = kept;
      desc = "[" + std::to_string(len) + " entries, " + std::to_string(reqs.size()) + " reads]";
      break;
    }
    case 3: {  // NULL and LIO_NOP between the reads
      desc = "[";
      for (Req* q : reqs) {
        if (r.Chance(50)) {
          list.push_back(nullptr);
          desc += "NULL ";
        }
        struct aiocb* nop = NewCb();
        nop->aio_lio_opcode = LIO_NOP;
        nop->aio_fildes = -1;  // ignored
        list.push_back(nop);
        list.push_back(q->cb);
        desc += "NOP R" + std::to_string(q->idx) + " ";
      }
      desc.back() = ']';
      break;
    }
    case 4: {  // one entry with a bad aio_lio_opcode
      Req* bad = reqs[r.Below(reqs.size())];
      bad->cb->aio_lio_opcode = r.Pick({7, -1, 100});  // not 3 or 4: glibc runs its internal LIO_DSYNC/LIO_SYNC (docs/posix.md)
      bad->params += " !opcode=" + std::to_string(bad->cb->aio_lio_opcode);
      for (Req* q : reqs) list.push_back(q->cb);
      desc = "[reads, one with a bad opcode]";
      break;
    }
    default: {  // one entry with a bad priority, fd, offset or sigevent
      Req* bad = reqs[r.Below(reqs.size())];
      switch (r.Below(4)) {
        case 0: bad->cb->aio_reqprio = r.Pick({-1, 21, 100000}); bad->params += " !prio=" + std::to_string(bad->cb->aio_reqprio); break;
        case 1: bad->cb->aio_fildes = r.Chance(50) ? -1 : ClosedFd(); bad->params += " !fd=" + std::to_string(bad->cb->aio_fildes); break;
        case 2: bad->cb->aio_offset = -1; bad->params += " !off=-1"; break;
        default: SetReqEv(*bad, kEvBadNotify); break;
      }
      for (Req* q : reqs) list.push_back(q->cb);
      desc = "[reads, one with a bad field: " + bad->params.substr(bad->params.rfind(' ') + 1) + (bad->ev == kEvBadNotify ? " !ev" : "") + "]";
      break;
    }
  }
  if (variant != 1) nent = static_cast<int>(list.size());
  for (Req* q : reqs) Line("%s %s ev=%s (in list)", q->name.c_str(), q->params.c_str(), kEvName[q->ev]);
  Ev list_ev = mode == LIO_WAIT ? (r.Chance(20) ? PickEv(r) : kEvNone) : PickEv(r);  // LIO_WAIT ignores it
  if (mode == LIO_WAIT && Notifies(list_ev)) list_ev = kEvNone;  // (not counted: keep it simple)
  bool accepted = Listio(s, mode, list, nent, list_ev, desc, reqs, s.id * 100 + 90);
  if (!accepted)
    for (Req* q : reqs) q->submitted = false;
  WaitScenario(s, 10000);
  RecordAll(s);
  if (accepted && !list.empty() && r.Chance(40)) {
    std::vector<const struct aiocb*> clist(list.begin(), list.end());
    for (auto& e : clist)
      if (e != nullptr && e->aio_lio_opcode == LIO_NOP) e = nullptr;
    errno = 0;
    struct timespec ts = {1, 0};
    int rc = aio_suspend(clist.data(), static_cast<int>(clist.size()), &ts);
    int err = errno;
    ++g_calls;
    Line("aio_suspend(the finished list, NOP entries as NULL) -> %s", Rc(rc, err).c_str());
  }
  RecordFile("reg", path);
  if (WaitDone(Submitted(s), 0)) close(fd);
}

// ------------------------------------------------------------------------------------ misc calls

void Misc(Scen& s) {
  Rng& r = *s.rng;
  std::string path = s.dir + "/m" + std::to_string(s.id);
  int fd = open(path.c_str(), O_CREAT | O_TRUNC | O_RDWR, 0644);
  if (fd < 0 || !WriteAll(fd, "0123456789", 10)) exit(2);
  int other = open(path.c_str(), O_RDONLY);
  int n = static_cast<int>(r.Range(2, 5));
  for (int i = 0; i < n; ++i) {
    switch (r.Below(9)) {
      case 0: RecordCancel("(fd=-1, NULL)", -1, nullptr); break;
      case 1: RecordCancel("(fd=closed, NULL)", ClosedFd(), nullptr); break;
      case 2: RecordCancel("(fd=reg with nothing queued, NULL)", fd, nullptr); break;
      case 3: {  // aio_cancel(other fd, finished aiocb of fd)
        Req& q = NewReq(s, kRead, "reg", fd);
        q.cb->aio_buf = Buffer(10);
        q.cb->aio_nbytes = 10;
        q.params = "n=10 off=0";
        SetReqEv(q, PickEv(r));
        Submit(s, q);
        if (q.submitted && WaitDone({q.cb}, 10000)) RecordFinal(q, false);
        if (q.submitted) RecordCancel("(fd=other, aiocb of " + q.name + ")", other, q.cb);
        break;
      }
      case 4: {
        const struct aiocb* list[3] = {nullptr, nullptr, nullptr};
        errno = 0;
        struct timespec ts = {0, 1000000};
        bool null_ts = r.Chance(50);
        int rc = aio_suspend(list, 3, null_ts ? nullptr : &ts);
        int err = errno;
        ++g_calls;
        Line("aio_suspend([NULL NULL NULL], %s) -> %s", null_ts ? "NULL" : "1 ms", Rc(rc, err).c_str());
        break;
      }
      case 5: {
        const struct aiocb* list[1] = {nullptr};
        errno = 0;
        int rc = aio_suspend(list, 0, nullptr);
        int err = errno;
        ++g_calls;
        Line("aio_suspend(nent 0, NULL) -> %s", Rc(rc, err).c_str());
        break;
      }
      case 6: {  // a finished request and an odd timeout: at once, whatever the timeout
        Req& q = NewReq(s, kRead, "reg", fd);
        q.cb->aio_buf = Buffer(4);
        q.cb->aio_nbytes = 4;
        q.cb->aio_offset = 3;
        q.params = "n=4 off=3";
        SetReqEv(q, kEvNone);
        Submit(s, q);
        if (!q.submitted || !WaitDone({q.cb}, 10000)) break;
        const struct aiocb* list[1] = {q.cb};
        struct timespec ts = {0, 0};
        std::string what;
        switch (r.Below(3)) {
          case 0: ts.tv_nsec = -1; what = "!tv_nsec=-1"; break;
          case 1: ts.tv_sec = LONG_MAX; what = "!tv_sec=LONG_MAX"; break;
          default: ts.tv_sec = -5; what = "!tv_sec=-5"; break;
        }
        errno = 0;
        int rc = aio_suspend(list, 1, &ts);
        int err = errno;
        ++g_calls;
        Line("aio_suspend(finished %s, %s) -> %s", q.name.c_str(), what.c_str(), Rc(rc, err).c_str());
        RecordFinal(q, false);
        break;
      }
      case 7: {  // aio_fsync with a bad fd or op: refused at submission
        Req& q = NewReq(s, kFsync, "", fd);
        int which = static_cast<int>(r.Below(3));
        if (which == 0) {
          q.cb->aio_fildes = -1;
          q.name += "!badfd";
          q.params = "op=O_SYNC";
        } else if (which == 1) {
          q.cb->aio_fildes = ClosedFd();
          q.name += "!closedfd";
          q.params = "op=O_DSYNC";
          q.fsync_op = O_DSYNC;
        } else {
          q.name += "reg";
          q.fsync_op = r.Pick({0, 3, -1});
          q.params = "!op=" + std::to_string(q.fsync_op);
        }
        SetReqEv(q, PickEv(r));
        Submit(s, q);
        break;
      }
      default: {
        if (r.Chance(30)) {  // POSIX: undefined; glibc returns the field (0), kaio -1/EINVAL
          struct aiocb* cb = NewCb();
          errno = 0;
          int e = aio_error(cb);
          int err = errno;
          ++g_calls;
          Line("aio_error(never submitted, zeroed) -> %s", Status(e, err).c_str());
        } else {
          RecordCancel("(fd=reg, NULL) nothing queued", fd, nullptr);
        }
        break;
      }
    }
  }
  WaitScenario(s, 10000);
  for (Req& q : s.reqs)
    if (q.submitted && q.op == kFsync) RecordFinal(q, false);
  if (WaitDone(Submitted(s), 0)) {
    close(fd);
    close(other);
  }
}

void RemoveTree(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  while (struct dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    std::string p = dir + "/" + name;
    if (unlink(p.c_str()) != 0) rmdir(p.c_str());
  }
  closedir(d);
  rmdir(dir.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = 1;
  const char* scratch = getenv("TEST_TMPDIR");
  if (scratch == nullptr) scratch = "/tmp";
  std::string dir_arg = scratch;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--seed=", 0) == 0) seed = strtoull(a.c_str() + 7, nullptr, 10);
    else if (a.rfind("--replay=", 0) == 0) seed = strtoull(a.c_str() + 9, nullptr, 10);
    else if (a.rfind("--dir=", 0) == 0) dir_arg = a.substr(6);
    else {
      fprintf(stderr, "usage: %s --seed=N [--dir=SCRATCH_DIR]   (--replay=N: same as --seed=N)\n", argv[0]);
      return 2;
    }
  }
  g_main = pthread_self();
  g_sig = SIGRTMIN + 3;
  if (pipe2(g_wake, O_NONBLOCK | O_CLOEXEC) != 0) return 2;
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_sigaction = OnSignal;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(g_sig, &sa, nullptr);
  BlockSig(true);  // before any thread exists, so every thread we start inherits it
  signal(SIGPIPE, SIG_IGN);

  std::string tmpl = dir_arg + "/posix_diff_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (mkdtemp(buf.data()) == nullptr) {
    fprintf(stderr, "mkdtemp %s: %s\n", tmpl.c_str(), strerror(errno));
    return 2;
  }
  std::string dir = buf.data();

  // The program's shape comes from the seed alone; each scenario draws from its own generator, so
  // a scenario whose course depends on an answer (what is still pending after a cancel...) cannot
  // change the scenarios after it.
  Rng rng(seed);
  int nscen = static_cast<int>(rng.Range(1, 4));
  std::vector<int> kinds;
  std::vector<uint64_t> seeds;
  for (int i = 0; i < nscen; ++i) {
    kinds.push_back(static_cast<int>(rng.Below(100)));
    seeds.push_back(rng.Next());
  }
  Line("seed=%llu scenarios=%d", static_cast<unsigned long long>(seed), nscen);
  std::vector<int> expected(static_cast<size_t>(nscen) + 1, 0);
  for (int i = 1; i <= nscen; ++i) {
    g_prefix = "s" + std::to_string(i);
    Rng srng(seeds[static_cast<size_t>(i - 1)]);
    Scen s;
    s.id = i;
    s.rng = &srng;
    s.dir = dir;
    s.reqs.reserve(64);  // Req pointers stay valid
    int x = kinds[static_cast<size_t>(i - 1)];
    if (x < 35) FileBatch(s);
    else if (x < 62) StreamReads(s);
    else if (x < 78) StreamWrites(s);
    else if (x < 92) ListEdge(s);
    else Misc(s);
    expected[static_cast<size_t>(i)] = s.expected_notes;
    NoteSummary n = WaitNotes(i, s.expected_notes, 2000);
    Line("notes = signal=%s thread=%s wrong=%d", List(n.sig).c_str(), List(n.thr).c_str(), n.bad);
  }
  // Late or duplicate notifications.
  g_prefix = "end";
  int all = 0;
  for (int e : expected) all += e;
  WaitNotes(-1, all + 1, 20);
  for (int i = 1; i <= nscen; ++i) {
    g_prefix = "s" + std::to_string(i);  // a scenario's own line: a late notification is its finding
    Line("notes at the end of the program = %d", CountNotes(i).total());
  }
  fprintf(stderr, "posix_diff_runner: seed %llu: %ld calls\n", static_cast<unsigned long long>(seed), g_calls);
  RemoveTree(dir);
  fflush(stdout);
  return 0;
}
