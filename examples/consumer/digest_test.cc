#include "digest.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kaio/requester.h"
#include "kaio/service.h"

namespace consumer {
namespace {

// A temporary file with `size` bytes of a pattern, removed at the end.
class TempFile {
 public:
  explicit TempFile(size_t size) {
    const char* dir = getenv("TEST_TMPDIR");
    path_ = std::string(dir != nullptr ? dir : "/tmp") + "/digest_test_XXXXXX";
    fd_ = mkstemp(path_.data());
    data_.resize(size);
    for (size_t i = 0; i < size; ++i) data_[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
    size_t off = 0;
    while (off < size) {
      ssize_t n = pwrite(fd_, data_.data() + off, size - off, static_cast<off_t>(off));
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  }
  ~TempFile() {
    close(fd_);
    unlink(path_.c_str());
  }
  int fd() const { return fd_; }
  uint64_t Expected() const { return Fnv1a(kFnvOffsetBasis, data_.data(), data_.size()); }

 private:
  std::string path_;
  int fd_ = -1;
  std::string data_;
};

class DigestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto service = kaio::Service::Create({.queue_depth = 64});
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = *std::move(service);
    auto requester = kaio::Requester::Create(*service_);
    ASSERT_TRUE(requester.ok()) << requester.status();
    requester_ = *std::move(requester);
  }
  void TearDown() override {
    requester_.reset();  // before the service
    service_.reset();
  }
  std::unique_ptr<kaio::Service> service_;
  std::unique_ptr<kaio::Requester> requester_;
};

TEST_F(DigestTest, MatchesADirectComputationForEverySize) {
  const size_t block = 4096;
  for (size_t size : {size_t{0}, size_t{1}, block - 1, block, block + 1, 7 * block + 333, size_t{1} << 20}) {
    for (int window : {1, 3, 16}) {
      TempFile file(size);
      absl::StatusOr<uint64_t> digest = DigestFile(*requester_, file.fd(), {.block_size = block, .window = window});
      ASSERT_TRUE(digest.ok()) << digest.status() << " size " << size << " window " << window;
      EXPECT_EQ(*digest, file.Expected()) << "size " << size << " window " << window;
    }
  }
  EXPECT_EQ(requester_->in_flight(), 0u);
  kaio::ServiceStats stats = service_->Stats();
  EXPECT_GT(stats.requests_completed, 0u);
  EXPECT_EQ(stats.requests_failed, 0u);
}

TEST_F(DigestTest, ReportsTheReadErrorAsAStatus) {
  int fd = open("/", O_RDONLY | O_DIRECTORY);  // fstat works; read(2) on a directory is EISDIR
  ASSERT_GE(fd, 0);
  absl::StatusOr<uint64_t> digest = DigestFile(*requester_, fd, {.block_size = 4096, .window = 4});
  close(fd);
  // A directory's st_size is non-zero on ext4, so reads are issued and fail.
  if (digest.ok()) GTEST_SKIP() << "this filesystem reports a zero-sized root directory";
  EXPECT_EQ(digest.status().code(), absl::StatusCode::kFailedPrecondition) << digest.status();  // EISDIR
  EXPECT_EQ(requester_->in_flight(), 0u);
}

TEST_F(DigestTest, RejectsBadOptions) {
  TempFile file(10);
  EXPECT_EQ(DigestFile(*requester_, file.fd(), {.block_size = 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DigestFile(*requester_, file.fd(), {.window = 0}).status().code(), absl::StatusCode::kInvalidArgument);
}

// The public error model seen from outside: a request on an fd that is not open fails alone, with its
// errno as the completion's result; submission errors are statuses.
TEST_F(DigestTest, KaioErrorModelFromOutside) {
  char buf[16];
  absl::StatusOr<kaio::Ticket> bad = requester_->Read(-1, buf, sizeof buf, 0);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  int fd = open("/dev/null", O_RDONLY);
  close(fd);  // now certainly not open
  absl::StatusOr<kaio::Ticket> ticket = requester_->Read(fd, buf, sizeof buf, 0);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  ASSERT_TRUE(requester_->WaitAll({*ticket}, absl::Seconds(30)).ok());
  EXPECT_EQ(requester_->Error(*ticket), EBADF);
  EXPECT_EQ(requester_->Return(*ticket), -EBADF);
  EXPECT_EQ(requester_->Return(*ticket), -EINVAL);  // tickets are single-use
}

}  // namespace
}  // namespace consumer
