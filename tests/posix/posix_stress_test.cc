// kaio's POSIX AIO under concurrency, meant for ThreadSanitizer: many threads submitting, waiting,
// cancelling and being notified at once. Each case checks the invariant that matters: every request
// is answered exactly once (its status final, its notification sent once), no waiter misses a
// completion, appends keep each caller's order.
#include <aio.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kaio/posix.h"
#include "tests/posix/posix_test_util.h"

namespace kaio::posix::testing {
namespace {

const Api& K() { return Kaio(); }

// A watchdog: fails the test (with a message) if `progress` stops moving for the deadline, instead of
// letting a lost wake-up hang the test until Bazel's timeout.
class Watchdog {
 public:
  explicit Watchdog(std::atomic<uint64_t>& progress) : progress_(progress) {
    thread_ = std::thread([this] {
      uint64_t last = progress_.load();
      auto last_change = Clock::now();
      std::unique_lock<std::mutex> lock(mu_);
      while (!done_) {
        cv_.wait_for(lock, std::chrono::milliseconds(100));
        uint64_t now = progress_.load();
        if (now != last) {
          last = now;
          last_change = Clock::now();
        } else if (Clock::now() - last_change > kDeadline) {
          std::fprintf(stderr, "watchdog: no progress for %lld s (a lost wake-up?)\n",
                       static_cast<long long>(kDeadline.count()));
          std::abort();
        }
      }
    });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::atomic<uint64_t>& progress_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

// Threads each keep 8 reads in flight and sleep in aio_suspend (no timeout) on a few of them, as fio
// does: completions of other threads' requests must never make a waiter miss its own.
TEST(PosixStress, SuspendersNeverMissAWakeup) {
  constexpr int kThreads = 4;
  constexpr int kDepth = 8;
  constexpr int kRequestsPerThread = 3000;
  TempFile file(1 << 20);
  std::atomic<uint64_t> progress{0};
  Watchdog watchdog(progress);
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::vector<std::vector<char>> bufs(kDepth, std::vector<char>(512));
      std::vector<struct aiocb> cbs(kDepth);
      std::vector<bool> busy(kDepth, false);
      int submitted = 0, done = 0;
      while (done < kRequestsPerThread) {
        for (int i = 0; i < kDepth; ++i) {
          if (busy[i]) {
            int e = K().error(&cbs[i]);
            if (e == EINPROGRESS) continue;
            if (e != 0 || K().ret(&cbs[i]) != 512) ++failures;
            busy[i] = false;
            ++done;
            progress.fetch_add(1);
          }
          if (!busy[i] && submitted < kRequestsPerThread) {
            cbs[i] = MakeCb(file.fd(), bufs[i].data(), 512, static_cast<off_t>(rng() % 2048) * 512);
            if (K().read(&cbs[i]) != 0) {
              ++failures;
              return;
            }
            busy[i] = true;
            ++submitted;
          }
        }
        // Wait on at most 2 of the in-flight requests, like fio's short suspend list.
        const struct aiocb* list[2];
        int n = 0;
        for (int i = 0; i < kDepth && n < 2; ++i) {
          if (busy[i]) list[n++] = &cbs[i];
        }
        if (n > 0 && K().suspend(list, n, nullptr) != 0 && errno != EINTR) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

// aio_cancel races completion: pipe reads are fed and cancelled at the same time. Every request ends
// either read (1 byte) or cancelled (ECANCELED, -1), and its SIGEV_THREAD callback runs exactly once;
// the bytes the reads consumed plus those left in the pipe are the bytes written.
TEST(PosixStress, CancelRacesCompletion) {
  constexpr int kRequests = 3000;
  Pipe p;
  std::vector<char> bufs(kRequests);
  std::vector<struct aiocb> cbs(kRequests);
  std::vector<std::atomic<int>> callbacks(kRequests);
  std::atomic<uint64_t> progress{0};
  Watchdog watchdog(progress);
  struct Context {
    std::atomic<int>* counts;
    std::atomic<uint64_t>* progress;
  } context{callbacks.data(), &progress};
  static Context* g_context;
  g_context = &context;
  for (int i = 0; i < kRequests; ++i) {
    cbs[i] = MakeCb(p.read_end(), &bufs[i], 1, 0);
    cbs[i].aio_sigevent.sigev_notify = SIGEV_THREAD;
    cbs[i].aio_sigevent.sigev_value.sival_int = i;
    cbs[i].aio_sigevent.sigev_notify_function = [](union sigval v) {
      g_context->counts[v.sival_int].fetch_add(1);
      g_context->progress->fetch_add(1);
    };
  }
  std::atomic<int> next{0};
  std::atomic<bool> stop{false};
  std::thread submitter([&] {
    for (int i = 0; i < kRequests; ++i) {
      ASSERT_EQ(K().read(&cbs[i]), 0);
      next.store(i + 1, std::memory_order_release);
    }
  });
  std::thread canceller([&] {
    std::mt19937 rng(7);
    while (!stop.load()) {
      int n = next.load(std::memory_order_acquire);
      if (n == 0) continue;
      int r = K().cancel(p.read_end(), &cbs[rng() % n]);
      EXPECT_TRUE(r == AIO_CANCELED || r == AIO_NOTCANCELED || r == AIO_ALLDONE) << r;
    }
  });
  // Feed bytes while the others run, one at a time (at most half as many bytes as requests, so the
  // pipe never fills).
  size_t fed = 0;
  while (next.load() < kRequests && fed < kRequests / 2) {
    p.Put(1);
    ++fed;
  }
  submitter.join();
  stop.store(true);
  canceller.join();
  // Whatever is still waiting gets its byte now.
  p.Put(kRequests);
  fed += kRequests;
  int read = 0, cancelled = 0;
  for (int i = 0; i < kRequests; ++i) {
    ASSERT_TRUE(WaitDone(K(), &cbs[i])) << i;
    int e = K().error(&cbs[i]);
    if (e == 0) {
      EXPECT_EQ(K().ret(&cbs[i]), 1) << i;
      ++read;
    } else {
      EXPECT_EQ(e, ECANCELED) << i;
      EXPECT_EQ(K().ret(&cbs[i]), -1) << i;
      ++cancelled;
    }
  }
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (int i = 0; i < kRequests; ++i) {
          if (callbacks[i].load() == 0) return false;
        }
        return true;
      },
      "every callback"));
  for (int i = 0; i < kRequests; ++i) EXPECT_EQ(callbacks[i].load(), 1) << i;
  EXPECT_EQ(read + cancelled, kRequests);
  EXPECT_EQ(static_cast<size_t>(p.Available()), fed - static_cast<size_t>(read));
  std::printf("read %d, cancelled %d\n", read, cancelled);
}

// Several threads append to one O_APPEND descriptor, each without waiting between its writes: no
// record is torn or lost, and each thread's records appear in the order it issued them.
TEST(PosixStress, AppendsKeepEachCallersOrder) {
  constexpr int kThreads = 4;
  constexpr int kRecords = 150;
  constexpr size_t kRecordSize = 64;
  TempFile file(0);
  int fd = file.Open(O_WRONLY | O_APPEND);
  ASSERT_GE(fd, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> records(kRecords);
      std::vector<struct aiocb> cbs(kRecords);
      for (int r = 0; r < kRecords; ++r) {
        char text[kRecordSize + 1];
        std::snprintf(text, sizeof(text), "thread %d record %06d", t, r);
        records[r] = std::string(text);
        records[r].resize(kRecordSize - 1, '.');
        records[r] += '\n';
        cbs[r] = MakeCb(fd, records[r].data(), kRecordSize, 0);
        ASSERT_EQ(K().write(&cbs[r]), 0);
      }
      for (int r = 0; r < kRecords; ++r) {
        ASSERT_TRUE(WaitDone(K(), &cbs[r]));
        EXPECT_EQ(K().ret(&cbs[r]), static_cast<ssize_t>(kRecordSize));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  std::vector<uint8_t> contents = file.Contents();
  ASSERT_EQ(contents.size(), kThreads * kRecords * kRecordSize);
  std::map<int, int> last;
  for (size_t off = 0; off < contents.size(); off += kRecordSize) {
    int t = -1, r = -1;
    ASSERT_EQ(std::sscanf(reinterpret_cast<const char*>(&contents[off]), "thread %d record %d", &t, &r), 2) << off;
    ASSERT_EQ(contents[off + kRecordSize - 1], '\n') << off;
    auto it = last.find(t);
    if (it != last.end()) {
      EXPECT_EQ(r, it->second + 1) << "thread " << t << " at offset " << off;
    }
    last[t] = r;
  }
  EXPECT_EQ(last.size(), static_cast<size_t>(kThreads));
  close(fd);
}

// lio_listio(LIO_NOWAIT) lists from several threads at once: each list's SIGEV_THREAD notification
// runs exactly once, after all of its requests completed.
TEST(PosixStress, ListNotificationsOncePerList) {
  constexpr int kThreads = 4;
  constexpr int kLists = 100;
  constexpr int kEntries = 4;
  TempFile file(1 << 20);
  struct ListState {
    std::vector<struct aiocb> cbs = std::vector<struct aiocb>(kEntries);
    std::vector<std::vector<char>> bufs = std::vector<std::vector<char>>(kEntries, std::vector<char>(1024));
    std::atomic<int> calls{0};
    std::atomic<bool> complete_when_called{true};
  };
  std::vector<ListState> lists(kThreads * kLists);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int l = 0; l < kLists; ++l) {
        ListState& s = lists[t * kLists + l];
        std::vector<struct aiocb*> list;
        for (int e = 0; e < kEntries; ++e) {
          s.cbs[e] = MakeCb(file.fd(), s.bufs[e].data(), 1024, static_cast<off_t>((l * kEntries + e) % 1000) * 1024);
          s.cbs[e].aio_lio_opcode = LIO_READ;
          list.push_back(&s.cbs[e]);
        }
        struct sigevent sig;
        std::memset(&sig, 0, sizeof(sig));
        sig.sigev_notify = SIGEV_THREAD;
        sig.sigev_value.sival_ptr = &s;
        sig.sigev_notify_function = [](union sigval v) {
          auto* state = static_cast<ListState*>(v.sival_ptr);
          for (struct aiocb& cb : state->cbs) {
            if (kaio_aio_error(&cb) == EINPROGRESS) state->complete_when_called.store(false);
          }
          state->calls.fetch_add(1);
        };
        ASSERT_EQ(K().listio(LIO_NOWAIT, list.data(), kEntries, &sig), 0);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(WaitUntil(
      [&] {
        for (ListState& s : lists) {
          if (s.calls.load() == 0) return false;
        }
        return true;
      },
      "every list notification"));
  for (ListState& s : lists) {
    EXPECT_EQ(s.calls.load(), 1);
    EXPECT_TRUE(s.complete_when_called.load());
    for (struct aiocb& cb : s.cbs) EXPECT_EQ(K().ret(&cb), 1024);
  }
}

// aio_fsync from several threads while writes run: each sync completes after the writes its thread
// queued before it.
TEST(PosixStress, FsyncAfterEachThreadsWrites) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 40;
  constexpr int kWrites = 4;
  TempFile file(kThreads * kRounds * kWrites * 4096);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string data(4096, static_cast<char>('a' + t));
      for (int r = 0; r < kRounds; ++r) {
        struct aiocb writes[kWrites];
        for (int w = 0; w < kWrites; ++w) {
          writes[w] = MakeCb(file.fd(), data.data(), 4096, ((t * kRounds + r) * kWrites + w) * 4096);
          if (K().write(&writes[w]) != 0) ++failures;
        }
        struct aiocb sync = MakeCb(file.fd(), nullptr, 0, 0);
        if (K().fsync(O_DSYNC, &sync) != 0) ++failures;
        if (!WaitDone(K(), &sync) || K().error(&sync) != 0) ++failures;
        for (struct aiocb& w : writes) {
          if (K().error(&w) == EINPROGRESS) ++failures;  // the sync finished before a write it covers
          if (!WaitDone(K(), &w) || K().ret(&w) != 4096) ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
}

}  // namespace
}  // namespace kaio::posix::testing

int main(int argc, char** argv) {
  kaio::posix::PosixOptions options;
  options.service.fallback_threads = 4;
  if (!kaio::posix::Configure(options).ok()) return 2;
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
