// RequesterOptions::inline_io: a requester whose thread polls submits and reaps on that thread
// while the service's threads are idle. What must hold: the same answers, exactly once, as through
// the service's threads; the caller's thread really does the io_submit; nothing waits for a flush
// that never comes (Shutdown, a full kernel queue); and it mixes with ordinary requesters.
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "tests/fault_syscalls.h"
#include "tests/test_fixture.h"
#include "tests/test_util.h"

namespace kaio {
namespace {

using ::kaio::testing::AlignedBuffer;
using ::kaio::testing::BlockBuffers;
using ::kaio::testing::CacheInPageCache;
using ::kaio::testing::FaultSyscalls;
using ::kaio::testing::kBlock;
using ::kaio::testing::kDeadline;
using ::kaio::testing::NewInlineRequester;
using ::kaio::testing::NewService;
using ::kaio::testing::ReadBlocks;
using ::kaio::testing::TempFile;
using ::kaio::testing::WaitUntil;

// Counts the io_submit calls made on one thread (the test's), through the real kernel.
class ThreadCountingSyscalls : public FaultSyscalls {
 public:
  int IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) override {
    if (std::this_thread::get_id() == watched_.load()) watched_calls_.fetch_add(1);
    return FaultSyscalls::IoSubmit(ctx, nr, iocbs);
  }
  void Watch(std::thread::id id) { watched_.store(id); }
  int watched_calls() const { return watched_calls_.load(); }

 private:
  std::atomic<std::thread::id> watched_{};
  std::atomic<int> watched_calls_{0};
};

TEST(InlineIo, ThePollingThreadSubmitsAndReapsCachedReadsItself) {
  ThreadCountingSyscalls sys;
  constexpr int kDepth = 32, kBlocks = 20 * kDepth, kMeasuredRounds = 10;
  ServiceOptions options;
  options.submit_batch = kDepth;  // a round fits one io_submit
  auto service = NewService(sys, options);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(kBlocks * kBlock);
  ASSERT_NO_FATAL_FAILURE(CacheInPageCache(file, kBlocks * kBlock));  // cache it all
  std::vector<AlignedBuffer> bufs = BlockBuffers(kDepth);
  ReadBlocks(*requester, file, bufs, 0, kDepth);  // creates the io context (the submitter's job)
  sys.Watch(std::this_thread::get_id());
  int round = 1;
  auto next_round = [&] {
    ReadBlocks(*requester, file, bufs, (round++ * kDepth) % kBlocks, kDepth);
  };
  // kaio learns that this fd's requests finish inside io_submit only when this thread gets the reap
  // role right after its submission; on a loaded machine the reaper thread, woken by the eventfd of
  // the not-yet-learnt requests, may hold it through many rounds. Until then a round is split into
  // device-sized calls and reaped by the reaper. So first wait for the state this test is about:
  // a round submitted in one call and reaped wholly on this thread (never reached: the test fails).
  const absl::Time give_up = absl::Now() + kDeadline;
  bool learnt = false;
  while (!learnt && absl::Now() < give_up) {
    const ServiceStats before = service->Stats();
    const int calls_before = sys.watched_calls();
    ASSERT_NO_FATAL_FAILURE(next_round());
    const ServiceStats after = service->Stats();
    learnt = sys.watched_calls() - calls_before == 1 &&
             after.inline_reaped - before.inline_reaped == static_cast<uint64_t>(kDepth);
  }
  ASSERT_TRUE(learnt) << "no round of cached reads was submitted and reaped on the requester's thread in "
                      << round - 1 << " rounds";
  // Learnt, it stays learnt: the submitter sleeps between rounds, so (nearly) every round is
  // submitted from this thread as one io_submit, its requests go without the eventfd flag, and this
  // thread reaps them.
  const ServiceStats before = service->Stats();
  const int calls_before = sys.watched_calls();
  for (int i = 0; i < kMeasuredRounds; ++i) ASSERT_NO_FATAL_FAILURE(next_round());
  const ServiceStats after = service->Stats();
  const uint64_t requests = kMeasuredRounds * kDepth;
  EXPECT_EQ(after.requests_completed - before.requests_completed, requests);
  EXPECT_EQ(after.requests_failed, 0u);
  EXPECT_GT(after.inline_submitted - before.inline_submitted, requests / 2);
  EXPECT_GT(after.inline_reaped - before.inline_reaped, requests / 2);
  EXPECT_LE(sys.watched_calls() - calls_before, kMeasuredRounds + 2)
      << "the last " << kMeasuredRounds << " rounds should take about one io_submit each";
}

TEST(InlineIo, DirectReadsFinishWhileTheRequesterSleeps) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  for (int round = 0; round < 4; ++round) ReadBlocks(*requester, file, bufs, round * 16, 16);
}

// A sleeping inline requester's device reads announce their completion to it (its reap fd), and it
// reaps them itself: the reaper thread is not woken to route them and then wake it (two context
// switches per read at iodepth 1). Counted where it is certain: the reaper's eventfd reads. Who
// routes a read is not (the reaper's millisecond look takes a few, more on a loaded machine).
class ReaperWakeCountingSyscalls : public ThreadCountingSyscalls {
 public:
  int EventFdRead(int fd, uint64_t* value) override {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof name);
    if (std::string(name) == ServiceOptions().reaper_thread_name) reaper_reads_.fetch_add(1);
    return ThreadCountingSyscalls::EventFdRead(fd, value);
  }
  int reaper_reads() const { return reaper_reads_.load(); }

 private:
  std::atomic<int> reaper_reads_{0};
};

TEST(InlineIo, ASleepingRequesterIsWokenByTheKernelNotTheReaper) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  ReaperWakeCountingSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  std::vector<AlignedBuffer> bufs = BlockBuffers(1);
  ReadBlocks(*requester, file, bufs, 0, 1);  // the io context exists from here on
  sys.Watch(std::this_thread::get_id());
  constexpr int kReads = 64;
  const int reaper_reads_before = sys.reaper_reads();
  for (int i = 0; i < kReads; ++i) ReadBlocks(*requester, file, bufs, i, 1);
  const int inline_calls = sys.watched_calls();
  const int reaper_wakes = sys.reaper_reads() - reaper_reads_before;
  ASSERT_GT(inline_calls, kReads / 2) << "most reads should be submitted on this thread, or the test proves nothing";
  // One wake-up starts the reaper's watch of requests it is not told of; it lingers meanwhile.
  const ServiceStats stats = service->Stats();
  EXPECT_LT(reaper_wakes, inline_calls / 4) << "the reaper was woken for reads announced to their requester"
      << " (nowait_retries " << stats.nowait_retries << ", io_submit calls " << stats.io_submit_calls
      << ", inline reaped " << stats.inline_reaped << ")";
}

// Announced only to the requester, a read must still finish when the requester does not wait for
// it: Error() reaps nothing, so only the reaper's look at the ring (every millisecond while such
// requests are in flight) can move it.
TEST(InlineIo, ADeviceReadNobodyWaitsForStillCompletes) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  std::vector<AlignedBuffer> bufs = BlockBuffers(2);
  // One read waited for first, so the requester has slept on its reap fd (and the fd kind is known).
  ReadBlocks(*requester, file, bufs, 0, 1);
  auto t = requester->Read(file.fd(), bufs[1].data(), kBlock, 5 * kBlock, 7);
  ASSERT_TRUE(t.ok()) << t.status();
  requester->Flush();
  EXPECT_TRUE(WaitUntil([&] { return requester->Error(*t) != EINPROGRESS; }))
      << "nobody reaped a read announced only to its requester";
  EXPECT_EQ(requester->Error(*t), 0);
  EXPECT_EQ(requester->Return(*t), static_cast<int64_t>(kBlock));
  EXPECT_EQ(bufs[1].data()[0], TempFile::PatternByte(5 * kBlock));
}

TEST(InlineIo, WaitAllAndWaitAnyFlushWhatTheyWaitFor) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(8 * kBlock);
  std::vector<AlignedBuffer> bufs;
  for (int round = 0; round < 10; ++round) {
    bufs.clear();
    std::vector<Ticket> tickets;
    for (int i = 0; i < 4; ++i) {
      bufs.emplace_back(kBlock);
      auto t = requester->Read(file.fd(), bufs.back().data(), kBlock, i * kBlock);
      ASSERT_TRUE(t.ok());
      tickets.push_back(*t);
    }
    auto any = requester->WaitAny(tickets, kDeadline);
    ASSERT_TRUE(any.ok()) << any.status();
    ASSERT_TRUE(requester->WaitAll(tickets, kDeadline).ok());
    for (Ticket t : tickets) EXPECT_EQ(requester->Return(t), static_cast<int64_t>(kBlock));
  }
}

// A requester that queued requests and never polls again must not hold up Shutdown.
TEST(InlineIo, ShutdownSubmitsRequestsNeverFlushed) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(16 * kBlock);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  ReadBlocks(*requester, file, bufs, 0, 16);  // the submitter has an io context and goes to sleep
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(requester->Read(file.fd(), bufs[i].data(), kBlock, i * kBlock).ok());
  std::atomic<bool> shut{false};
  std::thread stopper([&] {
    service->Shutdown();
    shut = true;
  });
  EXPECT_TRUE(WaitUntil([&] { return shut.load(); })) << "Shutdown waited for a flush that never came";
  stopper.join();
  std::vector<Completion> done(16);
  ASSERT_EQ(requester->Poll(absl::MakeSpan(done)), 16u);
  for (const Completion& c : done) EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
}

// io_submit says the kernel queue is full while the requester submits inline: the caller must not
// wait for room, so the rest goes back to the queue for the submitter thread, and nothing is lost.
TEST(InlineIo, AFullKernelQueueHandsTheRestToTheSubmitter) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  FaultSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  ReadBlocks(*requester, file, bufs, 0, 16);
  ServiceStats before = service->Stats();
  sys.submit_error = -EAGAIN;
  sys.submit_error_count = 3;
  for (int round = 1; round < 4; ++round) ReadBlocks(*requester, file, bufs, round * 16, 16);
  ServiceStats after = service->Stats();
  EXPECT_EQ(sys.submit_error_count.load(), 0) << "the injected refusals were not all met";
  EXPECT_GE(after.io_submit_eagain - before.io_submit_eagain, 3u);
  EXPECT_EQ(after.requests_failed, 0u);
  EXPECT_EQ(after.pool_requests, 0u);
}

// The kernel keeps refusing (EAGAIN) while more than one batch is queued: the inline caller must
// hand the rest to the submitter and return, not take the requeued requests back and try again
// forever (it did: Poll never returned, the submitter spun on the submit role).
TEST(InlineIo, PersistentEagainDoesNotKeepTheCallerInPoll) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  FaultSyscalls sys;
  ServiceOptions options;
  options.submit_batch = 4;
  auto service = NewService(sys, options);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(64 * kBlock, O_DIRECT);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  ReadBlocks(*requester, file, bufs, 0, 16);
  sys.submit_error = -EAGAIN;
  sys.submit_error_count = 1 << 30;  // until the test says otherwise
  for (int i = 0; i < 16; ++i) ASSERT_TRUE(requester->Read(file.fd(), bufs[i].data(), kBlock, i * kBlock, i).ok());
  std::vector<Completion> done(16);
  size_t got = requester->Poll(absl::MakeSpan(done));  // returns: that is the point
  // With nothing of ours in the kernel, the submitter gives up on the kernel after a while and the
  // pool runs them; every request completes, with its data.
  got += requester->Wait(absl::MakeSpan(done).subspan(got), 16 - got, kDeadline);
  sys.submit_error_count = 0;
  ASSERT_EQ(got, 16u);
  for (const Completion& c : done) {
    EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
    EXPECT_EQ(bufs[c.tag].data()[7], TempFile::PatternByte(c.tag * kBlock + 7));
  }
}

// Without the fallback pool nothing goes out with RWF_NOWAIT, so an io_submit of a read from an empty
// pipe blocks inside the call. It must never be made on the requester's thread: Poll() blocked here,
// and the single-threaded API fuzzer, which feeds its pipes itself, hung.
TEST(InlineIo, WithoutThePoolNothingIsSubmittedOnTheCallersThread) {
  ServiceOptions options;
  options.fallback_threads = 0;
  auto service = NewService(options);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(16 * kBlock);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  ReadBlocks(*requester, file, bufs, 0, 16);  // an io context exists and the submitter sleeps
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  char got[4] = {};
  auto t = requester->Read(fds[0], got, sizeof(got), 0);
  ASSERT_TRUE(t.ok());
  std::atomic<bool> returned{false};
  std::thread poller([&] {
    std::vector<Completion> done(1);
    EXPECT_EQ(requester->Poll(absl::MakeSpan(done)), 0u);
    returned = true;
  });
  const bool poll_returned = WaitUntil([&] { return returned.load(); }, std::chrono::seconds(5));
  ASSERT_EQ(write(fds[1], "pipe", 4), 4);  // unblocks a blocked io_submit too, so the test ends
  poller.join();
  EXPECT_TRUE(poll_returned) << "Poll() blocked in io_submit on the requester's thread";
  ASSERT_TRUE(requester->WaitAll({*t}, kDeadline).ok());
  EXPECT_EQ(requester->Return(*t), 4);
  EXPECT_EQ(std::string(got, 4), "pipe");
  close(fds[0]);
  close(fds[1]);
}

// Cancel of a request queued by an inline requester and not yet flushed: never submitted.
TEST(InlineIo, CancelBeforeTheFlushIsReal) {
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile file(16 * kBlock);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  ReadBlocks(*requester, file, bufs, 0, 16);
  auto t = requester->Read(file.fd(), bufs[0].data(), kBlock, 0);
  ASSERT_TRUE(t.ok());
  auto cancelled = requester->Cancel(*t);
  ASSERT_TRUE(cancelled.ok());
  // The submitter may have woken for some other reason and taken it already: then it is in the
  // kernel or done, and Cancel says so; either way the answer and the result must agree.
  ASSERT_TRUE(requester->WaitAll({*t}, kDeadline).ok());
  int64_t result = requester->Return(*t);
  if (*cancelled == CancelResult::kCanceled) {
    EXPECT_EQ(result, -ECANCELED);
  } else {
    EXPECT_EQ(result, static_cast<int64_t>(kBlock));
  }
}

// Inline submission leaves the eventfd flag off requests on an fd whose requests finished inside
// io_submit so far. When that guess is wrong (here: the fd number now names an O_DIRECT file, whose
// reads finish later, from the device), the reaper must still find them: it watches the ring in
// io_getevents until every such request is back. Without that, this Wait would never return.
TEST(InlineIo, AReusedFdNumberThatTurnedAsyncIsStillReaped) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  ThreadCountingSyscalls sys;
  auto service = NewService(sys);
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile cached(64 * kBlock);
  TempFile direct(64 * kBlock, O_DIRECT);
  ASSERT_NO_FATAL_FAILURE(CacheInPageCache(cached, 64 * kBlock));
  const int fd = fcntl(cached.fd(), F_DUPFD_CLOEXEC, 100);
  ASSERT_GE(fd, 0);
  std::vector<AlignedBuffer> bufs = BlockBuffers(16);
  auto round = [&](int first) {
    for (int i = 0; i < 16; ++i) {
      ASSERT_TRUE(requester->Read(fd, bufs[i].data(), kBlock, (first + i) * kBlock, i).ok());
    }
    std::vector<Completion> done(16);
    ASSERT_EQ(requester->Wait(absl::MakeSpan(done), 16, kDeadline), 16u) << "requests were lost";
    for (const Completion& c : done) {
      ASSERT_EQ(c.result, static_cast<int64_t>(kBlock));
      ASSERT_EQ(bufs[c.tag].data()[4000], TempFile::PatternByte((first + c.tag) * kBlock + 4000));
    }
  };
  sys.Watch(std::this_thread::get_id());
  // Page-cache hits, until this thread has submitted inline a few times (the first rounds may go
  // through the submitter thread while it is still awake; slow under sanitizers): kaio has then seen
  // this fd's requests finish inside io_submit and sends them without the eventfd flag.
  auto reaped_inline = [&] { return service->Stats().inline_reaped; };
  for (int r = 0; r < 500 && (sys.watched_calls() < 3 || reaped_inline() == 0); ++r) round((r % 3) * 16);
  ASSERT_GE(sys.watched_calls(), 3) << "never submitted inline: the test proves nothing";
  ASSERT_GT(reaped_inline(), 0u) << "never reaped inline: the test proves nothing";
  // The same fd number now names the O_DIRECT file (as after close() and open()).
  ASSERT_EQ(dup3(direct.fd(), fd, O_CLOEXEC), fd);
  for (int r = 0; r < 3; ++r) round(r * 16);
  close(fd);
}

// Counts the preadv2 calls made on one thread (the test's): the reads ReadNow did in place of io_submit.
class ThreadCountingReads : public ThreadCountingSyscalls {
 public:
  int64_t Preadv2(int fd, const struct iovec* iov, int iovcnt, int64_t offset, int flags) override {
    if (std::this_thread::get_id() == watched_.load()) watched_reads_.fetch_add(1);
    return ThreadCountingSyscalls::Preadv2(fd, iov, iovcnt, offset, flags);
  }
  void WatchReads(std::thread::id id) {
    Watch(id);
    watched_.store(id);
  }
  int watched_reads() const { return watched_reads_.load(); }

 private:
  std::atomic<std::thread::id> watched_{};
  std::atomic<int> watched_reads_{0};
};

// One read at a time (iodepth 1): submitted, waited for, checked. Returns its result.
int64_t ReadOne(Requester& requester, int fd, AlignedBuffer& buf, size_t length, int64_t offset) {
  auto t = requester.Read(fd, buf.data(), length, offset);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return INT64_MIN;
  Completion c;
  EXPECT_EQ(requester.Wait(absl::MakeSpan(&c, 1), 1, kDeadline), 1u) << "a read was lost";
  return c.result;
}

// An inline requester and a cached file whose reads kaio has seen finish inside io_submit (rounds
// of 16 through the kernel), so that a lone read of it is tried with preadv2.
class LoneReads : public ::testing::Test {
 protected:
  void SetUp() override {
    service_ = NewService(sys_);
    ASSERT_NE(service_, nullptr);
    requester_ = NewInlineRequester(*service_);
    ASSERT_NO_FATAL_FAILURE(CacheInPageCache(file_, 64 * kBlock));
    std::vector<AlignedBuffer> bufs = BlockBuffers(16);
    for (int r = 0; r < 500 && service_->Stats().inline_reaped == 0; ++r) {
      ASSERT_NO_FATAL_FAILURE(ReadBlocks(*requester_, file_, bufs, 0, 16));
    }
    ASSERT_GT(service_->Stats().inline_reaped, 0u) << "never reaped inline: the test proves nothing";
  }
  int64_t Read(int64_t offset) { return ReadOne(*requester_, file_.fd(), buf_, kBlock, offset); }
  uint8_t At(size_t i) { return buf_.data()[i]; }

  ThreadCountingReads sys_;
  std::unique_ptr<Service> service_;
  std::unique_ptr<Requester> requester_;
  TempFile file_{64 * kBlock};
  AlignedBuffer buf_{kBlock};
};

TEST_F(LoneReads, APageCacheHitIsOnePreadOnTheCallersThread) {
  sys_.WatchReads(std::this_thread::get_id());
  const int submits_before = sys_.watched_calls();
  const ServiceStats before = service_->Stats();
  constexpr int kReads = 200;
  for (int i = 0; i < kReads; ++i) {
    const int block = (i * 7) % 64;
    ASSERT_EQ(Read(block * kBlock), static_cast<int64_t>(kBlock));
    ASSERT_EQ(At(123), TempFile::PatternByte(block * kBlock + 123));
  }
  const ServiceStats after = service_->Stats();
  // The submitter thread may take a read now and then (it is awake for a moment after a wake-up);
  // every other one is a preadv2 here, and no io_submit.
  EXPECT_GE(after.read_now - before.read_now, static_cast<uint64_t>(kReads * 9 / 10));
  EXPECT_GE(sys_.watched_reads(), kReads * 9 / 10);
  EXPECT_LE(sys_.watched_calls() - submits_before, kReads / 10) << "io_submit calls for lone page-cache reads";
  EXPECT_EQ(after.requests_failed, 0u);
}

TEST_F(LoneReads, AnUncachedPageGoesToThePoolWithItsData) {
  const ServiceStats before = service_->Stats();
  // preadv2(RWF_NOWAIT) says EAGAIN for a page not in the cache; injected, so the page's state is
  // no matter of chance (posix_fadvise may keep pages a writer still holds).
  sys_.preadv2_eagain_count.store(1000);
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(Read((i + 3) * kBlock), static_cast<int64_t>(kBlock));
    ASSERT_EQ(At(7), TempFile::PatternByte((i + 3) * kBlock + 7));
  }
  sys_.preadv2_eagain_count.store(0);
  const ServiceStats after = service_->Stats();
  EXPECT_GT(sys_.injected.read_now_eagain.load(), 0u) << "no read was tried with preadv2: the test proves nothing";
  EXPECT_GE(after.pool_requests - before.pool_requests, sys_.injected.read_now_eagain.load());
  EXPECT_EQ(after.read_now, before.read_now);
}

TEST_F(LoneReads, AReadAcrossTheEndOfTheFileGetsTheShortAnswer) {
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(Read(64 * kBlock - 100), 100);
    ASSERT_EQ(At(99), TempFile::PatternByte(64 * kBlock - 1));
    ASSERT_EQ(Read(64 * kBlock), 0);
  }
}

// An empty read of a directory is EISDIR (pread's and kernel AIO's answer), though preadv2 of no
// bytes would say 0 without looking at the file: the differential test against glibc found it.
TEST_F(LoneReads, AnEmptyReadOfADirectoryOnTheSameNumberIsEisdir) {
  const int dir = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(dir, 0);
  ASSERT_EQ(dup3(dir, file_.fd(), O_CLOEXEC), file_.fd());  // as after close() and open()
  close(dir);
  EXPECT_EQ(ReadOne(*requester_, file_.fd(), buf_, 0, 0), -EISDIR);
  EXPECT_EQ(ReadOne(*requester_, file_.fd(), buf_, kBlock, 0), -EISDIR);
}

// A number that named a buffered file names an O_DIRECT one now (close, then open): a preadv2 of it
// waits for the device, so after the first (which is noticed: it took long) its reads go to the kernel.
TEST(InlineIo, ANumberReusedForAnODirectFileIsReadOnTheCallersThreadAtMostOnce) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  auto service = NewService();
  ASSERT_NE(service, nullptr);
  auto requester = NewInlineRequester(*service);
  TempFile cached(64 * kBlock);
  TempFile direct(64 * kBlock, O_DIRECT);
  ASSERT_NO_FATAL_FAILURE(CacheInPageCache(cached, 64 * kBlock));
  const int fd = fcntl(cached.fd(), F_DUPFD_CLOEXEC, 100);
  ASSERT_GE(fd, 0);
  AlignedBuffer buf(kBlock);
  for (int i = 0; i < 500 && service->Stats().read_now == 0; ++i) {
    std::vector<AlignedBuffer> bufs = BlockBuffers(16);
    for (int j = 0; j < 16; ++j) ASSERT_TRUE(requester->Read(fd, bufs[j].data(), kBlock, j * kBlock, j).ok());
    std::vector<Completion> done(16);
    ASSERT_EQ(requester->Wait(absl::MakeSpan(done), 16, kDeadline), 16u);
    ASSERT_EQ(ReadOne(*requester, fd, buf, kBlock, 5 * kBlock), static_cast<int64_t>(kBlock));
  }
  ASSERT_GT(service->Stats().read_now, 0u) << "no lone read was done by preadv2: the test proves nothing";
  ASSERT_EQ(dup3(direct.fd(), fd, O_CLOEXEC), fd);
  const uint64_t before = service->Stats().read_now;
  for (int i = 0; i < 20; ++i) {
    ASSERT_EQ(ReadOne(*requester, fd, buf, kBlock, (i + 1) * kBlock), static_cast<int64_t>(kBlock));
    ASSERT_EQ(buf.data()[42], TempFile::PatternByte((i + 1) * kBlock + 42));
  }
  // The first read may be a preadv2 (it waits for the device: 20 us or more on any disk here); then
  // F_GETFL says O_DIRECT and the fd is async for good.
  EXPECT_LE(service->Stats().read_now - before, 1u);
  close(fd);
}

// Inline and ordinary requesters on four threads at once: every request answered once and right.
TEST(InlineIo, MixesWithOrdinaryRequestersOnManyThreads) {
  KAIO_SKIP_UNLESS_O_DIRECT();
  ServiceOptions options;
  options.queue_depth = 16;  // smaller than the total in flight: the kernel queue fills up
  auto service = NewService(options);
  ASSERT_NE(service, nullptr);
  TempFile cached(256 * kBlock);
  TempFile direct(256 * kBlock, O_DIRECT);
  std::vector<std::thread> threads;
  std::atomic<int> bad{0};
  for (int id = 0; id < 4; ++id) {
    threads.emplace_back([&, id] {
      RequesterOptions ro;
      ro.inline_io = id % 2 == 0;
      auto requester = Requester::Create(*service, ro);
      if (!requester.ok()) {
        bad++;
        return;
      }
      const TempFile& file = id < 2 ? cached : direct;
      std::vector<AlignedBuffer> bufs = BlockBuffers(8);
      std::vector<Completion> done(8);
      for (int round = 0; round < 150; ++round) {
        const int first = (round * 8 + id * 32) % 248;
        for (int i = 0; i < 8; ++i) {
          if (!(*requester)->Read(file.fd(), bufs[i].data(), kBlock, (first + i) * kBlock, i).ok()) bad++;
        }
        if ((*requester)->Wait(absl::MakeSpan(done), 8, kDeadline) != 8) {
          bad++;
          return;
        }
        for (const Completion& c : done) {
          if (c.result != static_cast<int64_t>(kBlock) ||
              bufs[c.tag].data()[100] != TempFile::PatternByte((first + c.tag) * kBlock + 100)) {
            bad++;
          }
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  ServiceStats stats = service->Stats();
  EXPECT_EQ(stats.requests_completed, 4u * 150 * 8);
  EXPECT_EQ(stats.in_flight, 0u);
}

}  // namespace
}  // namespace kaio
