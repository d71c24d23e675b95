// Google Benchmark micro-benchmarks of kaio's hot paths, so a regression shows up as a number:
//
//   slot claim/free      SlotTable::Acquire + Free (every request takes and gives back a slot)
//   enqueue              moodycamel enqueue with a producer token (Requester -> submitter)
//   bulk drain           try_dequeue_bulk with a consumer token (the submitter's drain)
//   routing              Mailbox::Deliver (reaper -> requester, one CAS per completion)
//   poll                 Mailbox::Drain + take (what Requester::Poll does per completion)
//   poll (empty)         Requester::Poll when nothing is there (a thread-per-core loop's idle cost)
//   null-I/O round trip  Requester::Read + Wait through the real submitter and reaper threads, with a
//                        fake kernel (Syscalls seam) that completes every iocb at once: kaio's own
//                        software cost per request, device and page cache out of the way
//
//   bazel run -c opt //bench:hot_paths -- --benchmark_min_time=0.5
#include <fcntl.h>
#include <sys/uio.h>
#include <sys/resource.h>
#include <unistd.h>

#include <benchmark/benchmark.h>

#include <concurrentqueue/concurrentqueue.h>

#include <cerrno>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/mailbox.h"
#include "core/slot.h"
#include "core/syscalls.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "runtime/service_access.h"
#include "tools/clock.h"

namespace {

using kaio::core::PackWord;
using kaio::core::SlotState;
using kaio::core::SlotTable;
using kaio_tools::NowNs;

double ProcessCpuSeconds() {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// ---------------------------------------------------------------- slots

void BM_SlotAcquireFree(benchmark::State& state) {
  SlotTable slots(1 << 16);
  for (auto _ : state) {
    uint32_t index = slots.Acquire();
    uint64_t word = slots.at(index).word.load(std::memory_order_relaxed);
    benchmark::DoNotOptimize(slots.Free(index, word));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SlotAcquireFree);

// ---------------------------------------------------------------- queue

// Times `batch` enqueues (per item), then drains them untimed.
void BM_QueueEnqueue(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  moodycamel::ConcurrentQueue<uint32_t> queue;
  moodycamel::ProducerToken producer(queue);
  moodycamel::ConsumerToken consumer(queue);
  std::vector<uint32_t> out(batch);
  for (auto _ : state) {
    int64_t start = NowNs();
    for (size_t i = 0; i < batch; ++i) queue.enqueue(producer, static_cast<uint32_t>(i));
    int64_t took = NowNs() - start;
    state.SetIterationTime(static_cast<double>(took) / 1e9);
    size_t got = 0;
    while (got < batch) got += queue.try_dequeue_bulk(consumer, out.data(), batch - got);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
}
BENCHMARK(BM_QueueEnqueue)->Arg(1)->Arg(16)->Arg(64)->UseManualTime();

// Enqueues `batch` untimed, then times one bulk drain of them.
void BM_QueueBulkDrain(benchmark::State& state) {
  const size_t batch = static_cast<size_t>(state.range(0));
  moodycamel::ConcurrentQueue<uint32_t> queue;
  moodycamel::ProducerToken producer(queue);
  moodycamel::ConsumerToken consumer(queue);
  std::vector<uint32_t> out(batch);
  for (auto _ : state) {
    for (size_t i = 0; i < batch; ++i) queue.enqueue(producer, static_cast<uint32_t>(i));
    int64_t start = NowNs();
    size_t got = 0;
    while (got < batch) got += queue.try_dequeue_bulk(consumer, out.data(), batch - got);
    state.SetIterationTime(static_cast<double>(NowNs() - start) / 1e9);
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(state.iterations() * static_cast<int64_t>(batch));
}
BENCHMARK(BM_QueueBulkDrain)->Arg(1)->Arg(16)->Arg(64)->UseManualTime();

// ---------------------------------------------------------------- mailbox: routing and poll

struct MailboxFixture {
  explicit MailboxFixture(size_t n) : slots(1 << 16) {
    auto created = kaio::core::Mailbox::Create(slots, kaio::core::Syscalls::Real());
    mailbox = *std::move(created);
    for (size_t i = 0; i < n; ++i) {
      uint32_t index = slots.Acquire();
      slots.at(index).word.store(PackWord(1, SlotState::kCompleted), std::memory_order_relaxed);
      indices.push_back(index);
    }
  }
  // Takes everything delivered (what Requester::Poll does per completion, minus the slot free).
  size_t TakeAll() {
    mailbox->Drain();
    size_t n = 0;
    for (uint32_t index = mailbox->PeekLocal(); index != SlotTable::kNoSlot; index = mailbox->PeekLocal()) {
      mailbox->Unlink(index);
      ++n;
    }
    return n;
  }
  SlotTable slots;
  std::unique_ptr<kaio::core::Mailbox> mailbox;
  std::vector<uint32_t> indices;
};

void BM_MailboxDeliver(benchmark::State& state) {
  MailboxFixture f(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    int64_t start = NowNs();
    for (uint32_t index : f.indices) f.mailbox->Deliver(index);
    state.SetIterationTime(static_cast<double>(NowNs() - start) / 1e9);
    benchmark::DoNotOptimize(f.TakeAll());
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_MailboxDeliver)->Arg(1)->Arg(32)->UseManualTime();

void BM_MailboxDrainTake(benchmark::State& state) {
  MailboxFixture f(static_cast<size_t>(state.range(0)));
  for (auto _ : state) {
    for (uint32_t index : f.indices) f.mailbox->Deliver(index);
    int64_t start = NowNs();
    benchmark::DoNotOptimize(f.TakeAll());
    state.SetIterationTime(static_cast<double>(NowNs() - start) / 1e9);
  }
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_MailboxDrainTake)->Arg(1)->Arg(32)->UseManualTime();

// ---------------------------------------------------------------- through the service

// A kernel that completes every iocb inside io_submit (result = nbytes) and signals its eventfd,
// like a page-cache hit, without touching memory or a file.
class NullKernel : public kaio::core::Syscalls {
 public:
  int IoSetup(int, io_context_t* ctx) override {
    *ctx = reinterpret_cast<io_context_t>(&dummy_);
    return 0;
  }
  int IoDestroy(io_context_t) override { return 0; }
  int IoSubmit(io_context_t, long nr, struct iocb** iocbs) override {
    int resfd = -1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (long i = 0; i < nr; ++i) {
        struct io_event e = {};
        e.data = iocbs[i]->data;
        e.obj = iocbs[i];
        e.res = iocbs[i]->u.c.nbytes;
        done_.push_back(e);
        if (iocbs[i]->u.c.flags & 1) resfd = static_cast<int>(iocbs[i]->u.c.resfd);
      }
    }
    if (resfd >= 0) EventFdWrite(resfd, static_cast<uint64_t>(nr));
    return static_cast<int>(nr);
  }
  int IoGetEvents(io_context_t, long, long nr, struct io_event* events, struct timespec*) override {
    std::lock_guard<std::mutex> lock(mu_);
    long n = 0;
    while (n < nr && !done_.empty()) {
      events[n++] = done_.front();
      done_.pop_front();
    }
    return static_cast<int>(n);
  }
  int IoCancel(io_context_t, struct iocb*, struct io_event*) override { return -EINVAL; }
  // A lone read kaio does in place of io_submit (Engine::ReadNow): a page-cache hit too. Without
  // it the real preadv2 of the empty file says 0, a short read, and each one would go to io_submit after.
  int64_t Preadv2(int, const struct iovec* iov, int iovcnt, int64_t, int) override {
    int64_t total = 0;
    for (int i = 0; i < iovcnt; ++i) total += static_cast<int64_t>(iov[i].iov_len);
    return total;
  }

 private:
  int dummy_ = 0;
  std::mutex mu_;
  std::deque<struct io_event> done_;
};

// Requests in flight per round = range(0): submit them all, then Wait for all of them.
void BM_NullIoRoundTrip(benchmark::State& state) {
  const int depth = static_cast<int>(state.range(0));
  NullKernel kernel;
  auto service = *kaio::runtime::ServiceAccess::CreateWithSyscalls({}, &kernel);
  auto requester = *kaio::Requester::Create(*service);
  // A regular file (never read: the fake kernel answers), as the requests of a storage engine are.
  // Not /dev/null: a character device keeps its call order in kaio's stream lanes, one request at a
  // time, as a tty must, so a depth of 128 would measure the lane, not the hand-off.
  char path[] = "/tmp/kaio_hot_paths.XXXXXX";
  int fd = mkstemp(path);
  if (fd < 0) {
    state.SkipWithError("mkstemp in /tmp failed");
    return;
  }
  unlink(path);
  std::vector<char> buf(4096);
  std::vector<kaio::Completion> done(static_cast<size_t>(depth));
  const double cpu0 = ProcessCpuSeconds();
  for (auto _ : state) {
    for (int i = 0; i < depth; ++i) {
      auto ticket = requester->Read(fd, buf.data(), buf.size(), 0, static_cast<uint64_t>(i));
      if (!ticket.ok()) state.SkipWithError("Read failed");
    }
    size_t got = 0;
    while (got < static_cast<size_t>(depth)) {
      got += requester->Wait(absl::MakeSpan(done).subspan(got), 1, absl::Seconds(10));
    }
  }
  const double cpu = ProcessCpuSeconds() - cpu0;
  const double ops = static_cast<double>(state.iterations()) * depth;
  state.SetItemsProcessed(static_cast<int64_t>(ops));
  state.counters["process_cpu_ns_per_op"] = cpu * 1e9 / ops;
  kaio::ServiceStats stats = service->Stats();
  state.counters["avg_submit_batch"] = stats.average_batch;
  requester.reset();
  service.reset();
  close(fd);
}
BENCHMARK(BM_NullIoRoundTrip)->Arg(1)->Arg(32)->Arg(128)->UseRealTime();

void BM_RequesterPollEmpty(benchmark::State& state) {
  NullKernel kernel;
  auto service = *kaio::runtime::ServiceAccess::CreateWithSyscalls({}, &kernel);
  auto requester = *kaio::Requester::Create(*service);
  std::vector<kaio::Completion> done(32);
  for (auto _ : state) benchmark::DoNotOptimize(requester->Poll(absl::MakeSpan(done)));
}
BENCHMARK(BM_RequesterPollEmpty);

}  // namespace
