// Never block the submitter: what kernel AIO would run synchronously (buffered cache misses, ttys)
// goes to the bounded fallback pool, with the same semantics; pipes and sockets wait for readiness
// in the stream lanes (runtime/stream_lanes.h), in no thread at all.
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "tests/fault_syscalls.h"
#include "tests/test_fixture.h"
#include "tests/test_util.h"

namespace kaio {
namespace {

using ::kaio::testing::AlignedBuffer;
using ::kaio::testing::FaultSyscalls;
using ::kaio::testing::kBlock;
using ::kaio::testing::NewRequester;
using ::kaio::testing::NewService;
using ::kaio::testing::TempFile;

struct Pipe {
  Pipe() {
    if (pipe(fds) != 0) abort();
  }
  ~Pipe() {
    CloseRead();
    CloseWrite();
  }
  void CloseRead() {
    if (fds[0] >= 0) close(fds[0]);
    fds[0] = -1;
  }
  void CloseWrite() {
    if (fds[1] >= 0) close(fds[1]);
    fds[1] = -1;
  }
  int fds[2];
};

// A pseudo-terminal: a tty refuses RWF_NOWAIT, so its reads run in the pool, blocked until the
// master side writes. fds[0] is the terminal (read there), fds[1] the master (write there).
struct Pty {
  Pty() {
    fds[1] = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fds[1] < 0 || grantpt(fds[1]) != 0 || unlockpt(fds[1]) != 0) abort();
    fds[0] = open(ptsname(fds[1]), O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fds[0] < 0) abort();
  }
  ~Pty() {
    close(fds[0]);
    close(fds[1]);
  }
  int fds[2];
};

TEST(Fallback, EmptyPipeReadDoesNotHoldUpODirectReads) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto pipe_requester = NewRequester(*service);
  ASSERT_NE(pipe_requester, nullptr);
  Pipe p;
  char pbuf[32] = {};
  auto pending = pipe_requester->Read(p.fds[0], pbuf, sizeof(pbuf), 0);
  ASSERT_TRUE(pending.ok());

  TempFile file(256 * kBlock, O_DIRECT);
  constexpr int kThreads = 2, kPerThread = 500;
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto requester = NewRequester(*service);
      ASSERT_NE(requester, nullptr);
      AlignedBuffer buf(32 * kBlock);
      std::vector<Completion> done(32);
      for (int i = 0; i < kPerThread; i += 32) {
        int n = std::min(32, kPerThread - i);
        for (int k = 0; k < n; ++k) {
          ASSERT_TRUE(requester->Read(file.fd(), buf.data() + k * kBlock, kBlock, ((i + k + t) % 256) * kBlock).ok());
        }
        size_t got = requester->Wait(absl::MakeSpan(done), n, absl::Seconds(30));
        ASSERT_EQ(got, static_cast<size_t>(n));
        for (size_t k = 0; k < got; ++k) {
          if (done[k].result == static_cast<int64_t>(kBlock)) good++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good.load(), kThreads * kPerThread);
  // The pipe read is still pending, waiting for data in its stream lane: in no thread at all.
  EXPECT_EQ(pipe_requester->Error(*pending), EINPROGRESS);
  EXPECT_EQ(service->Stats().stream_requests, 1u);
  EXPECT_EQ(service->Stats().pool_running, 0u);

  ASSERT_EQ(write(p.fds[1], "fallback!", 9), 9);
  ASSERT_TRUE(pipe_requester->WaitAll({*pending}, absl::Seconds(20)).ok());
  EXPECT_EQ(pipe_requester->Return(*pending), 9);
  EXPECT_EQ(std::string(pbuf, 9), "fallback!");
}

TEST(Fallback, ColdBufferedFileGivesTheSameBytesAsPreadAndPwrite) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  TempFile file(64 * kBlock);
  // Evict the file from the page cache, so kernel AIO would have to block on the disk.
  ASSERT_EQ(fdatasync(file.fd()), 0);
  ASSERT_EQ(posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED), 0);
  std::vector<char> got(10000), want(10000);
  auto t = requester->Read(file.fd(), got.data(), got.size(), 12345);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*t), 10000);
  ASSERT_EQ(pread(file.fd(), want.data(), want.size(), 12345), 10000);
  EXPECT_EQ(got, want);

  std::vector<char> out(7000);
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i * 31);
  auto w = requester->Write(file.fd(), out.data(), out.size(), 3 * kBlock + 17);
  ASSERT_TRUE(w.ok());
  ASSERT_TRUE(requester->WaitAll({*w}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*w), 7000);
  std::vector<char> back(7000);
  ASSERT_EQ(pread(file.fd(), back.data(), back.size(), 3 * kBlock + 17), 7000);
  EXPECT_EQ(back, out);
}

// Regression: the non-blocking first attempt wrote what fit in the pipe (64 KiB) and that was
// delivered as the result; a blocking write(2) writes it all.
TEST(Fallback, LargePipeWriteCompletesInFull) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  Pipe p;
  std::string data(1 << 20, 'x');
  std::atomic<size_t> drained{0};
  std::thread reader([&] {
    std::vector<char> buf(1 << 16);
    while (drained.load() < data.size()) {
      ssize_t n = read(p.fds[0], buf.data(), buf.size());
      if (n <= 0) break;
      drained += static_cast<size_t>(n);
    }
  });
  auto t = requester->Write(p.fds[1], data.data(), data.size(), 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*t), static_cast<int64_t>(data.size()));
  reader.join();
  EXPECT_EQ(drained.load(), data.size());
}

// Regression: a buffered read of a file whose first pages only are cached stopped at the first
// uncached page under RWF_NOWAIT, and that short count was delivered although the file goes on.
// Drops the file from the page cache, then reads its first page back in: a buffered read of the
// whole file then stops short under RWF_NOWAIT, at the first page that is not cached.
void CacheOnlyTheFirstPage(const TempFile& file) {
  ASSERT_EQ(fdatasync(file.fd()), 0);
  ASSERT_EQ(posix_fadvise(file.fd(), 0, 0, POSIX_FADV_DONTNEED), 0);
  char first[kBlock];
  ASSERT_EQ(pread(file.fd(), first, kBlock, 0), static_cast<ssize_t>(kBlock));
}

TEST(Fallback, PartlyCachedReadCompletesInFull) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  TempFile file(256 * kBlock);
  ASSERT_NO_FATAL_FAILURE(CacheOnlyTheFirstPage(file));
  std::vector<char> got(256 * kBlock), want(256 * kBlock);
  auto t = requester->Read(file.fd(), got.data(), got.size(), 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*t), static_cast<int64_t>(got.size()));
  ASSERT_EQ(pread(file.fd(), want.data(), want.size(), 0), static_cast<ssize_t>(want.size()));
  EXPECT_EQ(got, want);
}

// The vectored twins: a short RWF_NOWAIT writev (pipe capacity) or readv (cached prefix) was
// delivered as the final result; the pool resumes inside the caller's iovec array instead.
TEST(Fallback, LargePipeWritevCompletesInFull) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  Pipe p;
  std::string data(1 << 20, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 23);
  std::string received;
  std::thread reader([&] {
    std::vector<char> buf(1 << 16);
    while (received.size() < data.size()) {
      ssize_t n = read(p.fds[0], buf.data(), buf.size());
      if (n <= 0) break;
      received.append(buf.data(), static_cast<size_t>(n));
    }
  });
  // Uneven pieces, so the resume point falls inside one of them.
  const size_t cuts[] = {0, 1000, 70000, 300001, data.size()};
  struct iovec iov[4];
  for (int i = 0; i < 4; ++i) iov[i] = {data.data() + cuts[i], cuts[i + 1] - cuts[i]};
  auto t = requester->Writev(p.fds[1], iov, 4, 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*t), static_cast<int64_t>(data.size()));
  p.CloseWrite();  // the reader sees end of file even if the write stopped short
  reader.join();
  EXPECT_TRUE(received == data) << "received " << received.size() << " bytes, not the bytes written";
}

TEST(Fallback, PartlyCachedReadvCompletesInFull) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  TempFile file(256 * kBlock);
  ASSERT_NO_FATAL_FAILURE(CacheOnlyTheFirstPage(file));
  std::vector<char> got(256 * kBlock), want(256 * kBlock);
  const size_t cuts[] = {0, 100, kBlock + 7, 100 * kBlock, got.size()};
  struct iovec iov[4];
  for (int i = 0; i < 4; ++i) iov[i] = {got.data() + cuts[i], cuts[i + 1] - cuts[i]};
  auto t = requester->Readv(file.fd(), iov, 4, 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*t), static_cast<int64_t>(got.size()));
  ASSERT_EQ(pread(file.fd(), want.data(), want.size(), 0), static_cast<ssize_t>(want.size()));
  EXPECT_EQ(got, want);
  EXPECT_EQ(iov[1].iov_base, got.data() + 100) << "the caller's iovec array was changed";
}

TEST(Fallback, SocketPairWorksInBothDirections) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  char in0[16] = {}, in1[16] = {};
  // Reads first (they wait in the pool), then writes.
  auto r1 = requester->Read(sv[1], in1, 5, 0);
  auto r0 = requester->Read(sv[0], in0, 5, 0);
  auto w0 = requester->Write(sv[0], "ping!", 5, 0);
  auto w1 = requester->Write(sv[1], "pong!", 5, 0);
  ASSERT_TRUE(r0.ok() && r1.ok() && w0.ok() && w1.ok());
  ASSERT_TRUE(requester->WaitAll({*r0, *r1, *w0, *w1}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*w0), 5);
  EXPECT_EQ(requester->Return(*w1), 5);
  EXPECT_EQ(requester->Return(*r0), 5);
  EXPECT_EQ(requester->Return(*r1), 5);
  EXPECT_EQ(std::string(in1, 5), "ping!");
  EXPECT_EQ(std::string(in0, 5), "pong!");
  close(sv[0]);
  close(sv[1]);
}

TEST(Fallback, PoolStaysWithinItsBoundAndCancelsQueuedWork) {
  ServiceOptions options;
  options.fallback_threads = 2;
  auto service = NewService(options);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  constexpr int kPipes = 6;
  Pty pipes[kPipes];  // reads that block a pool worker until the master side writes
  char buf[kPipes][8];
  std::vector<Ticket> tickets;
  for (int i = 0; i < kPipes; ++i) {
    auto t = requester->Read(pipes[i].fds[0], buf[i], 1, 0);
    ASSERT_TRUE(t.ok());
    tickets.push_back(*t);
  }
  ASSERT_TRUE(testing::WaitUntil([&] {
    ServiceStats stats = service->Stats();
    return stats.pool_requests == kPipes && stats.pool_running == 2;
  }));
  EXPECT_LE(service->Stats().pool_threads, 2u);
  // Two are running (blocked in read), four wait for a worker: those can really be cancelled.
  int cancelled = 0, running = 0;
  for (Ticket t : tickets) {
    auto r = requester->Cancel(t);
    ASSERT_TRUE(r.ok());
    if (*r == CancelResult::kCanceled) ++cancelled;
    if (*r == CancelResult::kNotCanceled) ++running;
  }
  EXPECT_EQ(running, 2);
  EXPECT_EQ(cancelled, kPipes - 2);
  for (int i = 0; i < kPipes; ++i) ASSERT_EQ(write(pipes[i].fds[1], "z\n", 2), 2);  // a line ends a tty read
  ASSERT_TRUE(requester->WaitAll(tickets, absl::Seconds(20)).ok());
  int delivered = 0, ecanceled = 0;
  for (Ticket t : tickets) {
    int64_t r = requester->Return(t);
    if (r == 1) ++delivered;
    if (r == -ECANCELED) ++ecanceled;
  }
  EXPECT_EQ(delivered, 2);
  EXPECT_EQ(ecanceled, kPipes - 2);
  EXPECT_LE(service->Stats().pool_threads, 2u);
}

TEST(Fallback, ShutdownWaitsForAReadWaitingOnAPipe) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  Pipe p;
  char buf[8];
  auto t = requester->Read(p.fds[0], buf, sizeof(buf), 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(testing::WaitUntil([&] { return service->Stats().stream_requests == 1; }));
  std::atomic<bool> shut{false};
  std::thread shutter([&] {
    service->Shutdown();
    shut = true;
  });
  EXPECT_FALSE(shut.load());
  EXPECT_EQ(requester->Error(*t), EINPROGRESS);
  p.CloseWrite();  // EOF: the blocked read returns 0
  shutter.join();
  EXPECT_TRUE(shut.load());
  EXPECT_EQ(requester->Error(*t), 0);
  EXPECT_EQ(requester->Return(*t), 0);
  EXPECT_EQ(service->Stats().in_flight, 0u);
}

TEST(Fallback, StatsSplitKernelAndPoolWork) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  TempFile file(4 * kBlock, O_DIRECT);
  AlignedBuffer buf(kBlock);
  auto direct = requester->Read(file.fd(), buf.data(), kBlock, 0);
  Pipe p;
  ASSERT_EQ(write(p.fds[1], "abc", 3), 3);
  char pbuf[3];
  auto piped = requester->Read(p.fds[0], pbuf, 3, 0);
  ASSERT_TRUE(direct.ok() && piped.ok());
  ASSERT_TRUE(requester->WaitAll({*direct, *piped}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*direct), static_cast<int64_t>(kBlock));
  EXPECT_EQ(requester->Return(*piped), 3);
  // The submitter counts after io_submit returns, which can be after the reaper delivered.
  EXPECT_TRUE(testing::WaitUntil([&] {
    ServiceStats stats = service->Stats();
    return stats.kernel_submitted >= 1 && stats.max_io_submit_ns > 0;
  }));
}

// A filesystem that refuses buffered RWF_NOWAIT writes (ext4, and tmpfs on this kernel): after the
// first refusal, the fd's next writes go from the producer to the pool, with no io_submit each, through
// kaio's threads and on an inline requester's own thread alike; and every byte lands.
TEST(Fallback, WritesTheKernelRefusesGoStraightToThePool) {
  for (const bool inline_io : {false, true}) {
    SCOPED_TRACE(inline_io ? "inline_io" : "through kaio's threads");
    auto service = NewService();
    ASSERT_NE(service, nullptr);
    RequesterOptions options;
    options.inline_io = inline_io;
    auto requester = NewRequester(*service, options);
    ASSERT_NE(requester, nullptr);
    constexpr int kBlocks = 16;
    TempFile file(kBlocks * kBlock);
    AlignedBuffer buf(kBlock);
    auto write_block = [&](int i) {
      std::memset(buf.data(), 0x40 + i, kBlock);
      auto t = requester->Write(file.fd(), buf.data(), kBlock, i * kBlock);
      ASSERT_TRUE(t.ok()) << t.status();
      ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
      ASSERT_EQ(requester->Return(*t), static_cast<int64_t>(kBlock));
    };
    ASSERT_NO_FATAL_FAILURE(write_block(0));
    // The submitter counts its io_submit after the call returns, which can be after the delivery.
    ASSERT_TRUE(testing::WaitUntil([&] { return service->Stats().io_submit_calls >= 1; }));
    const ServiceStats after_first = service->Stats();
    if (after_first.nowait_retries == 0) GTEST_SKIP() << "this filesystem takes buffered RWF_NOWAIT writes";
    for (int i = 1; i < kBlocks; ++i) ASSERT_NO_FATAL_FAILURE(write_block(i));
    const ServiceStats end = service->Stats();
    EXPECT_EQ(end.io_submit_calls, after_first.io_submit_calls) << "a write the kernel refuses was offered to it again";
    EXPECT_EQ(end.pool_requests - after_first.pool_requests, static_cast<uint64_t>(kBlocks - 1));
    std::vector<uint8_t> data(kBlocks * kBlock);
    ASSERT_EQ(pread(file.fd(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
    for (int i = 0; i < kBlocks; ++i) {
      ASSERT_EQ(data[i * kBlock + 17], 0x40 + i) << "block " << i;
    }
  }
}

// A buffered write the filesystem cannot do without blocking takes the file's inode lock for its
// whole copy, so the pool runs one fd's such writes one at a time: a burst of them is one worker's,
// and a write queued behind a running one wakes nobody (runtime/pool_queue.h).
TEST(Fallback, OneFilesRefusedWritesRunOneAtATimeOnOneWorker) {
  constexpr int kWrites = 64;
  FaultSyscalls sys;
  TempFile file(kWrites * kBlock);
  sys.fail_fd = file.fd();
  sys.fail_fd_errno = EOPNOTSUPP;  // io_submit refuses RWF_NOWAIT for this fd, on any filesystem
  ServiceOptions options;
  options.fallback_threads = 4;
  auto service = NewService(sys, options);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  ASSERT_NE(requester, nullptr);
  std::vector<AlignedBuffer> bufs;
  std::vector<Ticket> tickets;
  for (int i = 0; i < kWrites; ++i) {
    bufs.emplace_back(kBlock);
    std::memset(bufs.back().data(), 0x30 + i, kBlock);
    auto t = requester->Write(file.fd(), bufs.back().data(), kBlock, int64_t{i} * kBlock);
    ASSERT_TRUE(t.ok()) << t.status();
    tickets.push_back(*t);
  }
  ASSERT_TRUE(requester->WaitAll(tickets, absl::Seconds(20)).ok());
  for (Ticket t : tickets) EXPECT_EQ(requester->Return(t), static_cast<int64_t>(kBlock));
  const ServiceStats stats = service->Stats();
  EXPECT_EQ(stats.pool_requests, static_cast<uint64_t>(kWrites));
  EXPECT_EQ(stats.pool_threads, 1u) << "another worker was started for the same file's writes";
  std::vector<uint8_t> data(kWrites * kBlock);
  ASSERT_EQ(pread(file.fd(), data.data(), data.size(), 0), static_cast<ssize_t>(data.size()));
  for (int i = 0; i < kWrites; ++i) ASSERT_EQ(data[i * kBlock + 100], 0x30 + i) << "block " << i;
}

}  // namespace
}  // namespace kaio
