// Helpers shared by kaio's tests: temporary files, aligned buffers, waiting on a condition.
#ifndef KAIO_TESTS_TEST_UTIL_H_
#define KAIO_TESTS_TEST_UTIL_H_

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace kaio::testing {

inline std::string TempDir() {
  const char* dir = getenv("TEST_TMPDIR");
  return dir != nullptr ? dir : "/tmp";
}

// A file in the test's temporary directory, removed on destruction.
class TempFile {
 public:
  // size bytes of a known pattern (PatternByte), opened with extra_flags (e.g. O_DIRECT).
  explicit TempFile(size_t size, int extra_flags = 0) {
    path_ = TempDir() + "/kaio_test_XXXXXX";
    int fd = mkstemp(path_.data());
    if (fd < 0) abort();
    std::string data(size, '\0');
    for (size_t i = 0; i < size; ++i) data[i] = static_cast<char>(PatternByte(i));
    if (size > 0 && pwrite(fd, data.data(), size, 0) != static_cast<ssize_t>(size)) abort();
    fsync(fd);
    close(fd);
    fd_ = open(path_.c_str(), O_RDWR | extra_flags);
    if (fd_ < 0) abort();
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

}  // namespace kaio::testing

#endif  // KAIO_TESTS_TEST_UTIL_H_
