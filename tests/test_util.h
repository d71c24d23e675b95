// Helpers shared by kaio's tests: temporary files, aligned buffers, waiting on a condition, and the
// skip for machines whose temporary directory refuses O_DIRECT.
#ifndef KAIO_TESTS_TEST_UTIL_H_
#define KAIO_TESTS_TEST_UTIL_H_

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <stdlib.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "gtest/gtest.h"

namespace kaio::testing {

inline std::string TempDir() {
  const char* dir = getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

// Ends the test binary with what failed and the text of `err` (an errno): a test cannot go on
// without its file.
[[noreturn]] inline void DieWithErrno(int err, const std::string& what) {
  std::fprintf(stderr, "kaio test: %s: %s\n", what.c_str(), std::strerror(err));
  std::abort();
}

// A file in the test's temporary directory, removed on destruction.
class TempFile {
 public:
  // size bytes of a known pattern (PatternByte), opened with extra_flags (e.g. O_DIRECT). A file that
  // cannot be made ends the binary; a test that opens one with O_DIRECT calls
  // KAIO_SKIP_UNLESS_O_DIRECT() first, so it skips instead where the filesystem refuses O_DIRECT.
  explicit TempFile(size_t size, int extra_flags = 0) {
    path_ = TempDir() + "/kaio_test_XXXXXX";
    int fd = mkstemp(path_.data());
    if (fd < 0) {
      const int err = errno;  // before the message's allocations
      DieWithErrno(err, "mkstemp in " + TempDir());
    }
    std::string data(size, '\0');
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(PatternByte(i));
    if (size > 0 && pwrite(fd, data.data(), size, 0) != static_cast<ssize_t>(size)) {
      const int err = errno;
      DieWithErrno(err, "pwrite " + path_);
    }
    fsync(fd);
    close(fd);
    fd_ = open(path_.c_str(), O_RDWR | extra_flags);
    if (fd_ < 0) {
      const int err = errno;
      DieWithErrno(err, "open " + path_ +
                            ((extra_flags & O_DIRECT) != 0 ? " with O_DIRECT, in a test without KAIO_SKIP_UNLESS_O_DIRECT()"
                                                           : ""));
    }
  }
  ~TempFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  const std::string& path() const { return path_; }
  static uint8_t PatternByte(uint64_t offset) { return static_cast<uint8_t>((offset * 7 + offset / 4096) & 0xff); }

 private:
  std::string path_;
  int fd_ = -1;
};

// A 4 KiB-aligned buffer, as O_DIRECT wants.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t size) : size_(size) {
    void* p = nullptr;
    if (posix_memalign(&p, 4096, size == 0 ? 4096 : size) != 0) abort();
    data_.reset(static_cast<uint8_t*>(p));
    std::memset(data_.get(), 0, size);
  }
  uint8_t* data() { return data_.get(); }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(uint8_t* p) const { free(p); }
  };
  std::unique_ptr<uint8_t, Free> data_;
  size_t size_;
};

// Waits for a condition kaio exposes no event for (a counter in Stats()), checking it again and
// again until it holds or the deadline passes. Returns whether it holds.
inline bool WaitUntil(const std::function<bool()>& condition,
                      std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  auto end = std::chrono::steady_clock::now() + deadline;
  while (!condition()) {
    if (std::chrono::steady_clock::now() > end) return condition();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // back-off between checks
  }
  return true;
}

// Why TempDir()'s filesystem cannot serve the O_DIRECT files tests open, or "" when it can. Probed
// once per process, with what the tests do: open a file there with O_DIRECT and read one aligned
// block. Two ways it cannot:
// - it refuses O_DIRECT: open or read fails (EINVAL; tmpfs before Linux 6.6, ramfs, some FUSE);
// - it is tmpfs from Linux 6.6 on, which accepts O_DIRECT but serves it from memory: io_submit
//   completes such a read inside the call, while the tests rely on O_DIRECT reads that finish later,
//   from the device (they hold the reaper at io_getevents, count ring events ...), so they fail or hang.
inline const std::string& ODirectRefusal() {
  static const std::string reason = [] {
    std::string path = TempDir() + "/kaio_odirect_probe_XXXXXX";
    int fd = mkstemp(path.data());
    if (fd < 0) return std::string();  // not about O_DIRECT: TempFile says what is wrong
    const std::string block(4096, 'k');
    const bool written = pwrite(fd, block.data(), block.size(), 0) == static_cast<ssize_t>(block.size());
    struct statfs fs = {};
    const bool in_memory = fstatfs(fd, &fs) == 0 && fs.f_type == TMPFS_MAGIC;
    close(fd);
    std::string refused;
    int direct = open(path.c_str(), O_RDONLY | O_DIRECT);
    if (direct < 0) {
      refused = std::string("open: ") + std::strerror(errno);
    } else {
      void* buf = nullptr;
      if (written && posix_memalign(&buf, 4096, block.size()) == 0 &&
          pread(direct, buf, block.size(), 0) < 0) {
        refused = std::string("a 4 KiB aligned read: ") + std::strerror(errno);
      }
      free(buf);
      close(direct);
    }
    unlink(path.c_str());
    const std::string where = "the filesystem of $TEST_TMPDIR (" + TempDir() + ")";
    const std::string fix = "; point TEST_TMPDIR at a disk-backed directory to run this test";
    if (!refused.empty()) return where + " refuses O_DIRECT (" + refused + ")" + fix;
    if (in_memory) {
      return where + " is tmpfs: it accepts O_DIRECT but completes it in memory, inside io_submit, " +
             "not later from a device as this test needs" + fix;
    }
    return std::string();
  }();
  return reason;
}

}  // namespace kaio::testing

// Skips the running test, with the reason, where the filesystem of TempDir() cannot serve O_DIRECT
// (ODirectRefusal() says why).
// GTEST_SKIP() returns only from the function it is written in, so this goes in the TEST body itself
// (not in a helper it calls), before the test's first TempFile(..., O_DIRECT).
#define KAIO_SKIP_UNLESS_O_DIRECT()                                                   \
  do {                                                                                \
    if (const std::string& kaio_refusal = ::kaio::testing::ODirectRefusal();           \
        !kaio_refusal.empty()) {                                                      \
      GTEST_SKIP() << kaio_refusal;                                                   \
    }                                                                                 \
  } while (false)

#endif  // KAIO_TESTS_TEST_UTIL_H_
