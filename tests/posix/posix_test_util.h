// Helpers for the POSIX AIO tests: a function table that names one implementation (glibc's or
// kaio's), temporary files, pipes, signals, and waiting with deadlines (never sleeping as a way to
// synchronize).
#ifndef KAIO_TESTS_POSIX_POSIX_TEST_UTIL_H_
#define KAIO_TESTS_POSIX_POSIX_TEST_UTIL_H_

#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kaio/posix.h"

namespace kaio::posix::testing {

// One POSIX AIO implementation.
struct Api {
  const char* name;
  bool kaio;
  int (*read)(struct aiocb*);
  int (*write)(struct aiocb*);
  int (*fsync)(int, struct aiocb*);
  int (*error)(const struct aiocb*);
  ssize_t (*ret)(struct aiocb*);
  int (*cancel)(int, struct aiocb*);
  int (*suspend)(const struct aiocb* const[], int, const struct timespec*);
  int (*listio)(int, struct aiocb* const[], int, struct sigevent*);
};

inline const Api& Glibc() {
  static const Api api = {
      "glibc",
      false,
      [](struct aiocb* cb) { return ::aio_read(cb); },
      [](struct aiocb* cb) { return ::aio_write(cb); },
      [](int op, struct aiocb* cb) { return ::aio_fsync(op, cb); },
      [](const struct aiocb* cb) { return ::aio_error(cb); },
      [](struct aiocb* cb) { return ::aio_return(cb); },
      [](int fd, struct aiocb* cb) { return ::aio_cancel(fd, cb); },
      [](const struct aiocb* const list[], int n, const struct timespec* t) { return ::aio_suspend(list, n, t); },
      [](int mode, struct aiocb* const list[], int n, struct sigevent* sig) { return ::lio_listio(mode, list, n, sig); },
  };
  return api;
}

inline const Api& Kaio() {
  static const Api api = {
      "kaio",          true,           kaio_aio_read,    kaio_aio_write,   kaio_aio_fsync,
      kaio_aio_error,  kaio_aio_return, kaio_aio_cancel, kaio_aio_suspend, kaio_lio_listio,
  };
  return api;
}

using Clock = std::chrono::steady_clock;
constexpr std::chrono::seconds kDeadline{20};  // generous: CI machines are shared and slow

inline std::string TempDir() {
  const char* dir = getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

inline uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>((offset * 131 + 7) & 0xff); }

// A file of `size` pattern bytes in the test's temporary directory, removed on destruction.
class TempFile {
 public:
  explicit TempFile(size_t size, int open_flags = O_RDWR) {
    path_ = TempDir() + "/kaio_posix_XXXXXX";
    int fd = mkstemp(path_.data());
    if (fd < 0) abort();
    std::vector<uint8_t> data(size);
    for (size_t i = 0; i < size; ++i) data[i] = PatternByte(i);
    if (size > 0 && pwrite(fd, data.data(), size, 0) != static_cast<ssize_t>(size)) abort();
    close(fd);
    fd_ = open(path_.c_str(), open_flags);
    if (fd_ < 0) abort();
  }
  ~TempFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  // Another descriptor on the same file.
  int Open(int flags) const { return open(path_.c_str(), flags); }
  std::vector<uint8_t> Contents() const {
    int fd = open(path_.c_str(), O_RDONLY);
    std::vector<uint8_t> data(static_cast<size_t>(lseek(fd, 0, SEEK_END)));
    if (!data.empty() && pread(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size())) abort();
    close(fd);
    return data;
  }

 private:
  std::string path_;
  int fd_ = -1;
};

class Pipe {
 public:
  Pipe() {
    if (pipe2(fds_, O_CLOEXEC) != 0) abort();
  }
  ~Pipe() {
    if (fds_[0] >= 0) close(fds_[0]);
    if (fds_[1] >= 0) close(fds_[1]);
  }
  Pipe(const Pipe&) = delete;
  Pipe& operator=(const Pipe&) = delete;
  int read_end() const { return fds_[0]; }
  int write_end() const { return fds_[1]; }
  // Waits, up to the deadline, until the pipe holds data (a writer has started).
  ::testing::AssertionResult WaitReadable() const {
    struct pollfd readable = {fds_[0], POLLIN, 0};
    const int timeout_ms = static_cast<int>(std::chrono::milliseconds(kDeadline).count());
    if (poll(&readable, 1, timeout_ms) == 1) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "nothing was written to the pipe within the deadline";
  }
  // Bytes waiting in the pipe.
  int Available() const {
    int n = 0;
    ioctl(fds_[0], FIONREAD, &n);
    return n;
  }
  void Put(size_t n) {
    std::string data(n, 'p');
    ASSERT_EQ(::write(fds_[1], data.data(), n), static_cast<ssize_t>(n));
  }
  // Reads exactly n bytes (blocking).
  void Drain(size_t n) {
    std::vector<char> buf(65536);
    while (n > 0) {
      ssize_t got = ::read(fds_[0], buf.data(), std::min(n, buf.size()));
      ASSERT_GT(got, 0);
      n -= static_cast<size_t>(got);
    }
  }

 private:
  int fds_[2] = {-1, -1};
};

inline struct aiocb MakeCb(int fd, volatile void* buf, size_t nbytes, off_t offset) {
  struct aiocb cb;
  std::memset(&cb, 0, sizeof(cb));
  cb.aio_fildes = fd;
  cb.aio_buf = buf;
  cb.aio_nbytes = nbytes;
  cb.aio_offset = offset;
  cb.aio_sigevent.sigev_notify = SIGEV_NONE;
  return cb;
}

// Waits (with aio_suspend, a deadline, and no sleeping) until `cb` is no longer in progress.
inline ::testing::AssertionResult WaitDone(const Api& api, struct aiocb* cb) {
  auto deadline = Clock::now() + kDeadline;
  while (api.error(cb) == EINPROGRESS) {
    if (Clock::now() > deadline) return ::testing::AssertionFailure() << "request still in progress after the deadline";
    const struct aiocb* list[] = {cb};
    struct timespec ts = {1, 0};
    api.suspend(list, 1, &ts);  // EAGAIN (timeout) and EINTR just go round
  }
  return ::testing::AssertionSuccess();
}

// Waits until `pred` holds, re-checking every millisecond, up to the deadline: for counters (kaio's
// stats, the tests' callback tallies), which have no event to wait on.
template <typename Pred>
::testing::AssertionResult WaitUntil(Pred pred, const char* what) {
  auto deadline = Clock::now() + kDeadline;
  while (!pred()) {
    if (Clock::now() > deadline) return ::testing::AssertionFailure() << "timed out waiting for " << what;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, nullptr);  // polling a counter with no event, not synchronizing
  }
  return ::testing::AssertionSuccess();
}

// Waits, up to the deadline, until thread `tid` of this process sleeps in the kernel (state S in
// /proc: blocked in a wait), or `stop()` holds. /proc has no event to wait on, so this polls.
template <typename Stop>
::testing::AssertionResult WaitUntilAsleep(pid_t tid, Stop stop) {
  const std::string path = "/proc/self/task/" + std::to_string(tid) + "/stat";
  return WaitUntil(
      [&] {
        if (stop()) return true;
        char stat[512] = {};
        int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) return false;
        ssize_t n = read(fd, stat, sizeof(stat) - 1);
        close(fd);
        // "tid (comm) S ...": the state follows the last ')' (comm may hold one).
        const char* end = n > 0 ? std::strrchr(stat, ')') : nullptr;
        return end != nullptr && end[1] == ' ' && end[2] == 'S';
      },
      "the thread to block");
}

// Waits, up to the deadline, for child `pid` to end (a pidfd turns readable), and reaps it; a child
// still running then is killed and reported. *status is waitpid's.
inline ::testing::AssertionResult WaitForChild(pid_t pid, int* status) {
  const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) return ::testing::AssertionFailure() << "pidfd_open: " << std::strerror(errno);
  struct pollfd exited = {pidfd, POLLIN, 0};
  const int ready = poll(&exited, 1, static_cast<int>(std::chrono::milliseconds(kDeadline).count()));
  close(pidfd);
  if (ready == 1 && waitpid(pid, status, 0) == pid) return ::testing::AssertionSuccess();
  kill(pid, SIGKILL);
  waitpid(pid, status, 0);
  return ::testing::AssertionFailure() << "child " << pid << " did not finish within the deadline";
}

// The real-time signals the tests use; every thread blocks them (main() does it before any thread
// starts), so they stay pending until a test takes them with sigtimedwait.
inline int RequestSignal() { return SIGRTMIN + 1; }
inline int ListSignal() { return SIGRTMIN + 2; }

inline bool TakeSignal(int signo, siginfo_t* info, std::chrono::milliseconds timeout = kDeadline) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, signo);
  auto deadline = Clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - Clock::now());
    if (left.count() < 0) left = std::chrono::nanoseconds(0);
    struct timespec ts = {static_cast<time_t>(left.count() / 1000000000), static_cast<long>(left.count() % 1000000000)};
    int got = sigtimedwait(&set, info, &ts);
    if (got == signo) return true;
    if (got < 0 && errno == EINTR) continue;
    return false;
  }
}

inline void DrainSignals() {
  siginfo_t info;
  for (int sig : {RequestSignal(), ListSignal()}) {
    while (TakeSignal(sig, &info, std::chrono::milliseconds(0))) {
    }
  }
}

// Blocks every signal in the calling thread (SIGEV_THREAD callbacks call it first: glibc runs them
// with an empty mask, and a pending test signal must not land there).
inline void BlockAllSignals() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
}

}  // namespace kaio::posix::testing

#endif  // KAIO_TESTS_POSIX_POSIX_TEST_UTIL_H_
