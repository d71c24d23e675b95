// The completion service's semantics, one behaviour per test (see DESIGN.md's table).
#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <thread>
#include <utility>
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
using ::kaio::testing::WaitOne;
using ::kaio::testing::WaitUntil;

TEST(Service, WritesThenReadsBackThroughKernelAio) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(16 * kBlock, O_DIRECT);
  AlignedBuffer out(kBlock), in(kBlock);
  for (size_t i = 0; i < kBlock; ++i) out.data()[i] = static_cast<uint8_t>(i * 13 + 1);

  auto write = requester->Write(file.fd(), out.data(), kBlock, 3 * kBlock, /*tag=*/7);
  ASSERT_TRUE(write.ok()) << write.status();
  Completion c = WaitOne(*requester);
  EXPECT_EQ(c.ticket, *write);
  EXPECT_EQ(c.tag, 7u);
  EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));

  auto read = requester->Read(file.fd(), in.data(), kBlock, 3 * kBlock, /*tag=*/8);
  ASSERT_TRUE(read.ok()) << read.status();
  c = WaitOne(*requester);
  EXPECT_EQ(c.tag, 8u);
  EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
  EXPECT_EQ(std::memcmp(in.data(), out.data(), kBlock), 0);
  EXPECT_GE(service->Stats().contexts_created, 1u);
  // Counted after io_submit returns, which may be after the completion arrived.
  EXPECT_TRUE(WaitUntil([&] { return service->Stats().kernel_submitted >= 2; }));
}

TEST(Service, VectoredAndSyncRequestsWork) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(8 * kBlock);
  char a[100], b[200];
  std::memset(a, 'a', sizeof(a));
  std::memset(b, 'b', sizeof(b));
  struct iovec out[2] = {{a, sizeof(a)}, {b, sizeof(b)}};
  ASSERT_TRUE(requester->Writev(file.fd(), out, 2, 1000).ok());
  EXPECT_EQ(WaitOne(*requester).result, 300);
  ASSERT_TRUE(requester->Fsync(file.fd()).ok());
  EXPECT_EQ(WaitOne(*requester).result, 0);
  ASSERT_TRUE(requester->Fdatasync(file.fd()).ok());
  EXPECT_EQ(WaitOne(*requester).result, 0);

  char x[150] = {}, y[150] = {};
  struct iovec in[2] = {{x, sizeof(x)}, {y, sizeof(y)}};
  ASSERT_TRUE(requester->Readv(file.fd(), in, 2, 1000).ok());
  EXPECT_EQ(WaitOne(*requester).result, 300);
  EXPECT_EQ(std::string(x, 100), std::string(100, 'a'));
  EXPECT_EQ(std::string(x + 100, 50), std::string(50, 'b'));
  EXPECT_EQ(std::string(y, 150), std::string(150, 'b'));
}

TEST(Service, ShortReadAtEndOfFileIsAResultNotAnError) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(1000);
  char buf[4096];
  ASSERT_TRUE(requester->Read(file.fd(), buf, sizeof(buf), 900).ok());
  Completion c = WaitOne(*requester);
  EXPECT_EQ(c.result, 100);
  EXPECT_TRUE(c.ok());
}

// The seed read errors from res2; the kernel reports them as a negative res.
TEST(Service, KernelErrorInResIsTheErrno) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(kBlock, O_DIRECT);
  AlignedBuffer buf(kBlock);
  auto t = requester->Write(file.fd(), buf.data(), kBlock, int64_t{1} << 62);
  ASSERT_TRUE(t.ok()) << t.status();
  Completion c = WaitOne(*requester);
  EXPECT_EQ(c.result, -EFBIG);
  EXPECT_EQ(c.error(), EFBIG);
  EXPECT_EQ(service->Stats().requests_failed, 1u);
}

// io_submit fails a bad fd itself (-EBADF); only that request fails, the rest of the batch runs.
TEST(Service, SubmitErrorFailsOnlyThatRequest) {
  FaultSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile file(4 * kBlock);
  int closed_fd = dup(file.fd());
  close(closed_fd);
  char buf[3][512];
  // Hold the submitter so all three go out in one batch.
  sys.submit_gate.Close();
  ASSERT_TRUE(requester->Read(file.fd(), buf[0], 512, 0, 0).ok());
  sys.submit_gate.WaitArrived(1);
  ASSERT_TRUE(requester->Read(file.fd(), buf[0], 512, 0, 1).ok());
  ASSERT_TRUE(requester->Read(closed_fd, buf[1], 512, 0, 2).ok());
  ASSERT_TRUE(requester->Read(file.fd(), buf[2], 512, 512, 3).ok());
  sys.submit_gate.Open();
  Completion c[4];
  ASSERT_EQ(requester->Wait(absl::MakeSpan(c), 4, absl::Seconds(20)), 4u);
  for (const Completion& done : c) {
    if (done.tag == 2) {
      EXPECT_EQ(done.result, -EBADF);
    } else {
      EXPECT_EQ(done.result, 512) << "tag " << done.tag;
    }
  }
}

TEST(Service, ErrorAndReturnFollowTheSeedSemantics) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  char buf[16];
  auto t = requester->Read(pipe_fds[0], buf, sizeof(buf), 0);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(requester->Error(*t), EINPROGRESS);
  EXPECT_EQ(requester->Return(*t), -EINPROGRESS);  // not released while running
  ASSERT_EQ(write(pipe_fds[1], "hello", 5), 5);
  ASSERT_TRUE(requester->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Error(*t), 0);
  EXPECT_EQ(requester->Return(*t), 5);
  EXPECT_EQ(std::string(buf, 5), "hello");
  // Returned: the ticket is stale.
  EXPECT_EQ(requester->Return(*t), -EINVAL);
  EXPECT_EQ(requester->Error(*t), EINVAL);
  // And Poll does not deliver it again.
  Completion c;
  EXPECT_EQ(requester->Poll(absl::MakeSpan(&c, 1)), 0u);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

TEST(Service, StaleForgedAndEmptyTicketsAreEinval) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  char buf[64];
  auto t = requester->Read(file.fd(), buf, sizeof(buf), 0);
  ASSERT_TRUE(t.ok());
  Completion c = WaitOne(*requester);
  ASSERT_EQ(c.ticket, *t);
  // Consumed by Wait: stale now, even though the next request reuses the same slot.
  auto next = requester->Read(file.fd(), buf, sizeof(buf), 0);
  ASSERT_TRUE(next.ok());
  EXPECT_NE(*next, *t);
  EXPECT_EQ(requester->Error(*t), EINVAL);
  EXPECT_EQ(requester->Return(*t), -EINVAL);
  EXPECT_FALSE(requester->Cancel(*t).ok());
  EXPECT_EQ(requester->WaitAll({*t}, absl::Seconds(1)).code(), absl::StatusCode::kInvalidArgument);
  for (Ticket forged : {Ticket(), Ticket(0xdeadbeef12345678ull, 7), Ticket(uint64_t{1} << 32 | 999999, 1)}) {
    EXPECT_EQ(requester->Error(forged), EINVAL);
    EXPECT_EQ(requester->Return(forged), -EINVAL);
    EXPECT_FALSE(requester->Cancel(forged).ok());
  }
  WaitOne(*requester);
}

TEST(Service, AnotherRequestersTicketCannotBeReturned) {
  auto service = NewService();
  auto mine = NewRequester(*service);
  auto theirs = NewRequester(*service);
  TempFile file(kBlock);
  char buf[64];
  auto t = theirs->Read(file.fd(), buf, sizeof(buf), 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(theirs->WaitAll({*t}).ok());
  EXPECT_EQ(mine->Return(*t), -EINVAL);
  EXPECT_EQ(mine->Error(*t), EINVAL);  // tickets name their requester: every call checks (issue 14)
  EXPECT_EQ(theirs->Error(*t), 0);
  EXPECT_EQ(theirs->Return(*t), 64);
}

TEST(Service, BadInputIsAStatusAtTheCall) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  char buf[16];
  EXPECT_EQ(requester->Read(file.fd(), nullptr, 16, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Write(file.fd(), nullptr, 16, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Read(file.fd(), buf, 16, -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Read(file.fd(), buf, 16, INT64_MAX - 8).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Read(-1, buf, 16, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Fsync(-3).status().code(), absl::StatusCode::kInvalidArgument);
  struct iovec iov[2] = {{buf, 8}, {nullptr, 8}};
  EXPECT_EQ(requester->Readv(file.fd(), iov, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Readv(file.fd(), nullptr, 1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(requester->Readv(file.fd(), iov, -1, 0).status().code(), absl::StatusCode::kInvalidArgument);
  // A zero-length read with no buffer is fine.
  ASSERT_TRUE(requester->Read(file.fd(), nullptr, 0, 0).ok());
  EXPECT_EQ(WaitOne(*requester).result, 0);
  // Nothing was accepted by the failed calls.
  EXPECT_EQ(service->Stats().requests_accepted, 1u);

  service->Shutdown();
  auto after = requester->Read(file.fd(), buf, 16, 0);
  EXPECT_EQ(after.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Service, BadOptionsAreInvalidArgumentAtCreate) {
  auto expect_invalid = [](ServiceOptions options, const char* field) {
    auto service = Service::Create(options);
    ASSERT_FALSE(service.ok()) << field << " was accepted";
    EXPECT_EQ(service.status().code(), absl::StatusCode::kInvalidArgument) << field;
    EXPECT_NE(service.status().message().find(field), absl::string_view::npos)
        << "the message does not name " << field << ": " << service.status().message();
  };
  const std::pair<const char*, void (*)(ServiceOptions&)> bad_fields[] = {
      {"queue_depth", [](ServiceOptions& o) { o.queue_depth = 0; }},
      {"submit_batch", [](ServiceOptions& o) { o.submit_batch = 0; }},
      {"reap_batch", [](ServiceOptions& o) { o.reap_batch = -1; }},
      {"device_submit_chunk", [](ServiceOptions& o) { o.device_submit_chunk = 0; }},
      {"max_requests", [](ServiceOptions& o) { o.max_requests = 0; }},
      {"fallback_threads", [](ServiceOptions& o) { o.fallback_threads = -1; }},
  };
  for (const auto& [field, spoil] : bad_fields) {
    ServiceOptions o;
    spoil(o);
    expect_invalid(o, field);
  }
  ServiceOptions o;
  o.device_submit_chunk = 1000;  // above submit_batch: allowed, it is submit_batch then
  EXPECT_TRUE(Service::Create(o).ok());
}

TEST(Service, MaxRequestsIsResourceExhaustedNotACrash) {
  ServiceOptions options;
  options.max_requests = 1000;  // not a whole chunk of 1024: the limit is exact
  auto service = NewService(options);
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  static char buf[8];
  std::vector<Ticket> tickets;
  for (int i = 0; i < 1000; ++i) {
    auto t = requester->Read(file.fd(), buf, 1, 0);
    ASSERT_TRUE(t.ok()) << i << ": " << t.status();
    tickets.push_back(*t);
  }
  auto over = requester->Read(file.fd(), buf, 1, 0);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  ASSERT_TRUE(requester->WaitAll(tickets).ok());
  for (Ticket t : tickets) EXPECT_EQ(requester->Return(t), 1);
  // Slots came back: we can submit again.
  EXPECT_TRUE(requester->Read(file.fd(), buf, 1, 0).ok());
  WaitOne(*requester);
}

// ---------------------------------------------------------------- cancellation

TEST(Cancel, QueuedRequestIsNeverSubmittedAndCompletesCancelled) {
  FaultSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  char buf[2][64];
  sys.submit_gate.Close();
  auto first = requester->Read(file.fd(), buf[0], 64, 0);
  ASSERT_TRUE(first.ok());
  sys.submit_gate.WaitArrived(1);  // the submitter holds `first` inside io_submit
  auto second = requester->Read(file.fd(), buf[1], 64, 0);
  ASSERT_TRUE(second.ok());
  auto cancelled = requester->Cancel(*second);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(*cancelled, CancelResult::kCanceled);
  EXPECT_EQ(requester->Error(*second), ECANCELED);
  sys.submit_gate.Open();
  ASSERT_TRUE(requester->WaitAll({*first, *second}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*second), -ECANCELED);
  EXPECT_EQ(requester->Return(*first), 64);
  uint32_t second_index = static_cast<uint32_t>(second->slot());
  EXPECT_FALSE(sys.WasSubmitted(reinterpret_cast<void*>(static_cast<uintptr_t>(second_index))));
  EXPECT_EQ(service->Stats().requests_cancelled, 1u);
}

TEST(Cancel, RequestInTheKernelIsNotCancelledAndDeliversItsResult) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  FaultSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile file(kBlock, O_DIRECT);
  AlignedBuffer buf(kBlock);
  sys.getevents_gate.Close();  // the reaper cannot take the result yet
  auto t = requester->Read(file.fd(), buf.data(), kBlock, 0);
  ASSERT_TRUE(t.ok());
  sys.getevents_gate.WaitArrived(1);  // submitted, and the kernel signalled its completion
  auto cancelled = requester->Cancel(*t);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(*cancelled, CancelResult::kNotCanceled);
  sys.getevents_gate.Open();
  Completion c = WaitOne(*requester);
  EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
  EXPECT_EQ(buf.data()[kBlock - 1], TempFile::PatternByte(kBlock - 1));
}

TEST(Cancel, FinishedRequestIsAllDone) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  char buf[64];
  auto t = requester->Read(file.fd(), buf, 64, 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(requester->WaitAll({*t}).ok());
  auto cancelled = requester->Cancel(*t);
  ASSERT_TRUE(cancelled.ok());
  EXPECT_EQ(*cancelled, CancelResult::kAllDone);
  EXPECT_EQ(requester->Return(*t), 64);
}

TEST(Cancel, CancelAllByFdCancelsQueuedOnesOfThatFdOnly) {
  FaultSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile a(kBlock), b(kBlock);
  char buf[8][16];
  sys.submit_gate.Close();
  auto held = requester->Read(a.fd(), buf[0], 16, 0);
  ASSERT_TRUE(held.ok());
  sys.submit_gate.WaitArrived(1);
  std::vector<Ticket> on_a, on_b;
  for (int i = 1; i < 4; ++i) on_a.push_back(*requester->Read(a.fd(), buf[i], 16, 0));
  for (int i = 4; i < 8; ++i) on_b.push_back(*requester->Read(b.fd(), buf[i], 16, 0));
  // `held` is inside io_submit (state: in the kernel), so not everything on a can be cancelled.
  CancelResult result = requester->CancelAll(a.fd());
  EXPECT_TRUE(result == CancelResult::kNotCanceled || result == CancelResult::kCanceled);
  for (Ticket t : on_a) EXPECT_EQ(requester->Error(t), ECANCELED);
  for (Ticket t : on_b) EXPECT_EQ(requester->Error(t), EINPROGRESS);
  sys.submit_gate.Open();
  std::vector<Ticket> all = on_a;
  all.insert(all.end(), on_b.begin(), on_b.end());
  all.push_back(*held);
  ASSERT_TRUE(requester->WaitAll(all, absl::Seconds(20)).ok());
  for (Ticket t : on_a) EXPECT_EQ(requester->Return(t), -ECANCELED);
  for (Ticket t : on_b) EXPECT_EQ(requester->Return(t), 16);
  EXPECT_EQ(requester->Return(*held), 16);
  EXPECT_EQ(requester->CancelAll(a.fd()), CancelResult::kAllDone);
}

// ---------------------------------------------------------------- batching and depth

TEST(Batching, ABusySubmitterSendsManyRequestsPerIoSubmit) {
  FaultSyscalls sys;
  ServiceOptions options;
  options.queue_depth = 1024;
  options.submit_batch = 128;
  options.device_submit_chunk = 128;  // the drain's batching, not the device chunking (tested below)
  auto service = NewService(sys, options);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile file(64 * kBlock);
  std::vector<char> buf(1000 * 8);
  sys.submit_gate.Close();  // the submitter is busy inside its first io_submit
  std::vector<Ticket> tickets;
  for (int i = 0; i < 1000; ++i) {
    auto t = requester->Read(file.fd(), &buf[i * 8], 8, (i % 64) * kBlock);
    ASSERT_TRUE(t.ok());
    tickets.push_back(*t);
  }
  sys.submit_gate.WaitArrived(1);
  sys.submit_gate.Open();
  ASSERT_TRUE(requester->WaitAll(tickets, absl::Seconds(30)).ok());
  for (Ticket t : tickets) ASSERT_EQ(requester->Return(t), 8);
  ServiceStats stats;
  EXPECT_TRUE(WaitUntil([&] {
    stats = service->Stats();
    return stats.kernel_submitted + stats.read_now + stats.pool_requests - stats.nowait_retries == 1000u;
  }));
  EXPECT_LE(stats.io_submit_calls, 20u) << "average batch " << stats.average_batch;
  std::printf("figure: 1000 requests queued behind a busy submitter went out in %llu io_submit calls\n",
              static_cast<unsigned long long>(stats.io_submit_calls));
}

// A batch bound for a device is passed to io_submit device_submit_chunk requests at a time (the
// kernel holds a call's requests back from the device until the call returns).
TEST(Batching, RequestsForADeviceGoToIoSubmitInChunks) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  FaultSyscalls sys;
  ServiceOptions options;
  options.submit_batch = 16;
  options.device_submit_chunk = 4;
  auto service = NewService(sys, options);
  ASSERT_NE(service, nullptr);
  auto requester = NewRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  AlignedBuffer buf(16 * kBlock);
  const int calls_before = sys.submit_calls.load();
  sys.submit_gate.Close();  // hold the submitter so the 16 are drained as one batch
  std::vector<Ticket> tickets;
  for (int i = 0; i < 16; ++i) {
    auto t = requester->Read(file.fd(), buf.data() + i * kBlock, kBlock, i * kBlock);
    ASSERT_TRUE(t.ok());
    tickets.push_back(*t);
    if (i == 0) sys.submit_gate.WaitArrived(1);
  }
  sys.submit_gate.Open();
  ASSERT_TRUE(requester->WaitAll(tickets, absl::Seconds(30)).ok());
  for (Ticket t : tickets) ASSERT_EQ(requester->Return(t), static_cast<int64_t>(kBlock));
  // The first request alone, then the other 15 as one drained batch in calls of at most 4.
  EXPECT_EQ(sys.submit_calls.load() - calls_before, 1 + 4);
}

TEST(Batching, FourThreadsOverflowADepthOfFourAndNothingFails) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  ServiceOptions options;
  options.queue_depth = 4;
  auto service = NewService(options);
  TempFile file(256 * kBlock, O_DIRECT);
  constexpr int kThreads = 4, kPerThread = 1000;
  std::atomic<int> failures{0}, completed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto requester = NewRequester(*service);
      AlignedBuffer buf(kPerThread * 512);
      std::vector<Ticket> tickets;
      for (int i = 0; i < kPerThread; ++i) {
        auto ticket = requester->Read(file.fd(), buf.data() + i * 512, 512, ((i + t) % 256) * kBlock);
        if (!ticket.ok()) {
          failures++;
          continue;
        }
        tickets.push_back(*ticket);
      }
      std::vector<Completion> done(kPerThread);
      size_t got = requester->Wait(absl::MakeSpan(done), kPerThread, absl::Seconds(60));
      for (size_t i = 0; i < got; ++i) {
        if (done[i].result != 512) failures++;
      }
      completed += static_cast<int>(got);
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(completed.load(), kThreads * kPerThread);
  ServiceStats stats = service->Stats();
  EXPECT_EQ(stats.requests_failed, 0u);
  std::printf("figure: depth 4, 4 threads x 1000: %d completed, %d failed, %llu io_submit calls\n",
              completed.load(), failures.load(), static_cast<unsigned long long>(stats.io_submit_calls));
}

// ---------------------------------------------------------------- waiting

double ThreadCpuSeconds() {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

TEST(Wait, WaitAllAndWaitAnyTimeOutWithEagainAndBurnNoCpu) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  TempFile file(kBlock);
  char pbuf[8], fbuf[8];
  auto pending = requester->Read(pipe_fds[0], pbuf, sizeof(pbuf), 0);
  auto done = requester->Read(file.fd(), fbuf, sizeof(fbuf), 0);
  ASSERT_TRUE(pending.ok() && done.ok());

  double cpu_before = ThreadCpuSeconds();
  absl::Time start = absl::Now();
  absl::Status all = requester->WaitAll({*pending, *done}, absl::Milliseconds(300));
  absl::Duration waited = absl::Now() - start;
  double cpu = ThreadCpuSeconds() - cpu_before;
  EXPECT_EQ(all.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(waited, absl::Milliseconds(290));
  EXPECT_LT(cpu, 0.05) << "WaitAll spun for " << cpu << " s of CPU";
  std::printf("figure: WaitAll timed out after %.0f ms using %.2f ms of CPU\n", absl::ToDoubleMilliseconds(waited),
              cpu * 1e3);

  auto any = requester->WaitAny({*pending, *done}, absl::Seconds(20));
  ASSERT_TRUE(any.ok());
  EXPECT_EQ(*any, 1u);
  EXPECT_EQ(requester->WaitAny({*pending}, absl::Milliseconds(100)).status().code(),
            absl::StatusCode::kDeadlineExceeded);

  ASSERT_EQ(write(pipe_fds[1], "x", 1), 1);
  auto first = requester->WaitAny({*pending}, absl::Seconds(20));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(*first, 0u);
  EXPECT_TRUE(requester->WaitAll({*pending, *done}, absl::Seconds(20)).ok());
  EXPECT_EQ(requester->Return(*pending), 1);
  EXPECT_EQ(requester->Return(*done), 8);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

TEST(Wait, WaitAllLeavesOtherCompletionsInTheMailbox) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(kBlock);
  char a[8], b[8];
  auto other = requester->Read(file.fd(), a, 8, 0, /*tag=*/1);
  auto waited = requester->Read(file.fd(), b, 8, 0, /*tag=*/2);
  ASSERT_TRUE(requester->WaitAll({*other, *waited}).ok());
  EXPECT_EQ(requester->Return(*waited), 8);
  Completion c[2];
  ASSERT_EQ(requester->Wait(absl::MakeSpan(c), 1, absl::Seconds(5)), 1u);
  EXPECT_EQ(c[0].tag, 1u);
  EXPECT_EQ(c[0].ticket, *other);
}

TEST(Wait, WaitTimesOutWithFewerThanAsked) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  Completion c[4];
  EXPECT_EQ(requester->Wait(absl::MakeSpan(c), 1, absl::Milliseconds(50)), 0u);
}

TEST(Notify, NotifyFdWorksInAnEpollLoop) {
  auto service = NewService();
  auto requester = NewRequester(*service);
  TempFile file(64 * kBlock);
  int epfd = epoll_create1(EPOLL_CLOEXEC);
  ASSERT_GE(epfd, 0);
  struct epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = requester->NotifyFd();
  ASSERT_EQ(epoll_ctl(epfd, EPOLL_CTL_ADD, requester->NotifyFd(), &ev), 0);
  // Nothing yet: not readable.
  struct epoll_event got;
  EXPECT_EQ(epoll_wait(epfd, &got, 1, 0), 0);
  constexpr int kRequests = 500;
  std::vector<char> buf(kRequests * 16);
  int submitted = 0, collected = 0;
  absl::Time deadline = absl::Now() + absl::Seconds(30);
  while (collected < kRequests && absl::Now() < deadline) {
    // Keep up to 32 in flight, like an event loop would.
    while (submitted < kRequests && submitted - collected < 32) {
      ASSERT_TRUE(requester->Read(file.fd(), &buf[submitted * 16], 16, (submitted % 64) * kBlock, submitted).ok());
      ++submitted;
    }
    int n = epoll_wait(epfd, &got, 1, 1000);
    if (n <= 0) continue;
    Completion c[8];
    size_t k;
    do {
      k = requester->Poll(absl::MakeSpan(c));
      for (size_t i = 0; i < k; ++i) {
        EXPECT_EQ(c[i].result, 16);
        ++collected;
      }
    } while (k == 8);
  }
  EXPECT_EQ(collected, kRequests);
  // All drained: the fd is quiet again.
  EXPECT_EQ(epoll_wait(epfd, &got, 1, 0), 0);
  close(epfd);
}

// ---------------------------------------------------------------- housekeeping and shutdown

TEST(Housekeeping, IdleContextIsReleasedAndRecreated) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  ServiceOptions options;
  options.idle_release = absl::Milliseconds(200);
  auto service = NewService(options);
  auto requester = NewRequester(*service);
  TempFile file(kBlock, O_DIRECT);
  AlignedBuffer buf(kBlock);
  ASSERT_TRUE(requester->Read(file.fd(), buf.data(), kBlock, 0).ok());
  EXPECT_EQ(WaitOne(*requester).result, static_cast<int64_t>(kBlock));
  EXPECT_EQ(service->Stats().contexts_created, 1u);
  ASSERT_TRUE(WaitUntil([&] { return service->Stats().contexts_released == 1; }));
  ASSERT_TRUE(requester->Read(file.fd(), buf.data(), kBlock, 0).ok());
  EXPECT_EQ(WaitOne(*requester).result, static_cast<int64_t>(kBlock));
  EXPECT_EQ(service->Stats().contexts_created, 2u);
}

TEST(Shutdown, WaitsForEveryRequestUnderLoad) {
  auto service = NewService();
  TempFile file(256 * kBlock);
  constexpr int kThreads = 3;
  std::atomic<int> accepted{0}, completed{0}, refused{0}, wrong{0};
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      auto requester = NewRequester(*service);
      std::vector<char> buf(64 * 64);
      started++;
      for (int round = 0; round < 100000; ++round) {
        int in_round = 0;
        for (int i = 0; i < 64; ++i) {
          auto ticket = requester->Read(file.fd(), &buf[i * 64], 64, (i % 256) * kBlock);
          if (!ticket.ok()) {
            EXPECT_EQ(ticket.status().code(), absl::StatusCode::kFailedPrecondition);
            refused++;
            break;
          }
          accepted++;
          in_round++;
        }
        std::vector<Completion> done(64);
        size_t got = requester->Wait(absl::MakeSpan(done), in_round, absl::Seconds(60));
        for (size_t i = 0; i < got; ++i) {
          if (done[i].result != 64) wrong++;
        }
        completed += static_cast<int>(got);
        if (in_round < 64) break;  // refused: the service is shutting down
      }
    });
  }
  ASSERT_TRUE(WaitUntil([&] { return started.load() == kThreads && accepted.load() > 2000; }));
  service->Shutdown();
  ServiceStats stats = service->Stats();
  EXPECT_EQ(stats.in_flight, 0u);
  for (auto& th : threads) th.join();
  EXPECT_EQ(refused.load(), kThreads);
  EXPECT_EQ(completed.load(), accepted.load());
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(service->Stats().requests_completed, static_cast<uint64_t>(accepted.load()));
  std::printf("figure: shutdown under load: %d accepted, %d completed, %d wrong\n", accepted.load(),
              completed.load(), wrong.load());
}

TEST(Shutdown, DestroyingARequesterWaitsForItsRequests) {
  auto service = NewService();
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);
  char buf[4];
  std::atomic<bool> destroyed{false};
  auto requester = NewRequester(*service);
  ASSERT_TRUE(requester->Read(pipe_fds[0], buf, 4, 0).ok());
  std::thread destroyer([&] {
    requester.reset();
    destroyed = true;
  });
  EXPECT_FALSE(destroyed.load());
  ASSERT_EQ(write(pipe_fds[1], "abcd", 4), 4);  // the buffer is written before the wait ends
  destroyer.join();
  EXPECT_EQ(std::string(buf, 4), "abcd");
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

// Issue 13, item 15: kaio's own descriptors stay out of the low numbers programs reuse. A program
// that dup2s onto the lowest free numbers after starting kaio (as daemons do for 0-2 and beyond)
// used to land on kaio's completion eventfd, and every later request failed with EINVAL.
TEST(Service, ItsDescriptorsStayOutOfTheLowNumbers) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  struct rlimit limit;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &limit), 0);
  if (limit.rlim_cur < 128) GTEST_SKIP() << "RLIMIT_NOFILE soft limit " << limit.rlim_cur << " < 128";
  auto lowest_free = [] {
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    close(fd);
    return fd;
  };
  const int low = lowest_free();
  // Descriptors the test inherited (a test runner's) may sit among the low numbers: only those
  // opened from here on are kaio's or the test's own.
  std::vector<bool> open_before(8);
  for (int i = 0; i < 8; ++i) open_before[i] = fcntl(low + i, F_GETFD) >= 0;
  auto service = Service::Create({});
  ASSERT_TRUE(service.ok()) << service.status();
  auto requester = Requester::Create(**service);
  ASSERT_TRUE(requester.ok());
  int pipe_fds[2];
  ASSERT_EQ(pipe(pipe_fds), 0);  // starts the stream lanes' epoll set and eventfd
  ASSERT_EQ(write(pipe_fds[1], "x", 1), 1);
  char byte = 0;
  auto piped = (*requester)->Read(pipe_fds[0], &byte, 1, 0);
  ASSERT_TRUE(piped.ok());
  ASSERT_TRUE((*requester)->WaitAll({*piped}, absl::Seconds(20)).ok());
  EXPECT_EQ((*requester)->Return(*piped), 1);
  // Every number from `low` up to the pipe's is the requester's notify fd or the pipe: none of kaio's.
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  ASSERT_GE(devnull, 0);
  std::vector<int> taken;
  for (int fd = low; fd < low + 8; ++fd) {
    if (fd == pipe_fds[0] || fd == pipe_fds[1] || fd == devnull || fd == (*requester)->NotifyFd()) continue;
    if (open_before[fd - low]) continue;  // not ours, nor kaio's: leave it alone
    if (fcntl(fd, F_GETFD) >= 0) {
      ADD_FAILURE() << "descriptor " << fd << " is open: one of kaio's in the low numbers";
      continue;
    }
    ASSERT_EQ(dup2(devnull, fd), fd);  // the program reuses the number
    taken.push_back(fd);
  }
  TempFile file(4096, O_DIRECT);
  AlignedBuffer buf(4096);
  auto t = (*requester)->Read(file.fd(), buf.data(), 4096, 0);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*requester)->WaitAll({*t}, absl::Seconds(20)).ok());
  EXPECT_EQ((*requester)->Return(*t), 4096);
  for (int fd : taken) close(fd);
  close(devnull);
  close(pipe_fds[0]);
  close(pipe_fds[1]);
}

}  // namespace
}  // namespace kaio
