// FallbackPool on its own: every pushed request is run once, by at most max_threads workers; one
// fd's lane runs on one worker, one request at a time, in push order; Stop finishes what the
// workers hold and joins them; a worker that spins for the next push takes it, and Stop ends the spin.
#include "runtime/fallback_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <vector>

#include "gtest/gtest.h"

namespace kaio::runtime {
namespace {

constexpr auto kDeadline = std::chrono::seconds(20);

// What the workers ran, and a gate that holds every run until the test opens it.
class Recorder {
 public:
  void Run(uint32_t index) {
    std::unique_lock<std::mutex> lock(mu_);
    ++running_;
    max_running_ = std::max(max_running_, running_);
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
    ran_.push_back(index);
    --running_;
    cv_.notify_all();
  }
  void Open() {
    std::lock_guard<std::mutex> lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  // Until `count` runs are in progress at once (held at the gate); false at the deadline.
  bool WaitRunning(int count) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return running_ >= count; });
  }
  bool WaitRan(size_t count) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, kDeadline, [&] { return ran_.size() >= count; });
  }
  std::vector<uint32_t> ran() {
    std::lock_guard<std::mutex> lock(mu_);
    return ran_;
  }
  int max_running() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_running_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = false;
  int running_ = 0;
  int max_running_ = 0;
  std::vector<uint32_t> ran_;
};

std::vector<uint32_t> AcquireSlots(core::SlotTable& slots, int count) {
  std::vector<uint32_t> indices;
  for (int i = 0; i < count; ++i) indices.push_back(slots.Acquire());
  return indices;
}

TEST(FallbackPool, OneFdsLaneRunsOnOneWorkerOneAtATimeInPushOrder) {
  core::SlotTable slots(64);
  Recorder recorder;
  FallbackPool pool(slots, /*max_threads=*/4, [&](uint32_t index) { recorder.Run(index); });
  const std::vector<uint32_t> indices = AcquireSlots(slots, 16);
  ASSERT_TRUE(pool.Push(indices[0], /*lane_fd=*/5));
  ASSERT_TRUE(recorder.WaitRunning(1)) << "the lane's first write never ran";
  // Its worker holds the lane: the rest wait in it, and wake nobody.
  for (size_t i = 1; i < indices.size(); ++i) ASSERT_TRUE(pool.Push(indices[i], 5));
  recorder.Open();
  ASSERT_TRUE(recorder.WaitRan(indices.size()));
  pool.Stop();
  EXPECT_EQ(recorder.ran(), indices);
  EXPECT_EQ(recorder.max_running(), 1);
  EXPECT_EQ(pool.threads_started(), 1u) << "writes behind a held lane must not start workers";
}

TEST(FallbackPool, WorkForAnyWorkerStartsWorkersUpToTheLimit) {
  core::SlotTable slots(64);
  Recorder recorder;
  FallbackPool pool(slots, /*max_threads=*/2, [&](uint32_t index) { recorder.Run(index); });
  const std::vector<uint32_t> indices = AcquireSlots(slots, 6);
  for (uint32_t index : indices) ASSERT_TRUE(pool.Push(index, PoolQueue::kAnyWorker));
  ASSERT_TRUE(recorder.WaitRunning(2)) << "two workers should run at once";
  EXPECT_EQ(pool.threads_started(), 2u);
  recorder.Open();
  ASSERT_TRUE(recorder.WaitRan(indices.size()));
  pool.Stop();
  std::vector<uint32_t> ran = recorder.ran();
  std::sort(ran.begin(), ran.end());
  EXPECT_EQ(ran, indices) << "each request exactly once";
  EXPECT_EQ(recorder.max_running(), 2);
}

TEST(FallbackPool, StopFinishesWhatTheWorkersHoldThenJoins) {
  core::SlotTable slots(64);
  Recorder recorder;
  FallbackPool pool(slots, /*max_threads=*/1, [&](uint32_t index) { recorder.Run(index); });
  const std::vector<uint32_t> indices = AcquireSlots(slots, 3);
  for (uint32_t index : indices) ASSERT_TRUE(pool.Push(index, /*lane_fd=*/7));
  ASSERT_TRUE(recorder.WaitRunning(1));
  recorder.Open();
  pool.Stop();  // the worker holds the lane: it runs all three before it leaves
  EXPECT_EQ(recorder.ran(), indices);
  pool.Stop();  // idempotent
}

// One request at a time, each pushed as soon as the last has run (iodepth 1): the worker spins
// for the next push instead of sleeping, and the push hands its request over without a wake-up.
// Every request still runs exactly once, in order; Stop ends a spin at once.
TEST(FallbackPool, OneAtATimePushesGoToTheSpinningWorkerAndStopEndsTheSpin) {
  cpu_set_t cpus;
  ASSERT_EQ(sched_getaffinity(0, sizeof(cpus), &cpus), 0);
  if (CPU_COUNT(&cpus) < 2) GTEST_SKIP() << "one CPU: the pool does not spin";
  core::SlotTable slots(64);
  std::mutex mu;
  std::condition_variable cv;
  std::vector<uint32_t> ran;
  // A spin far longer than the test (10 s), and every idle stretch counted as a round trip: every
  // push after the first sleep finds the worker spinning. A Stop that waited the spin out would
  // take 10 s.
  const PoolSpin long_spin{.spin_ns = 10'000'000'000, .wake_ns = 0, .streaming_gap_ns = 0};
  FallbackPool pool(
      slots, /*max_threads=*/1,
      [&](uint32_t index) {
        std::lock_guard<std::mutex> lock(mu);
        ran.push_back(index);
        cv.notify_all();
      },
      long_spin);
  const std::vector<uint32_t> indices = AcquireSlots(slots, 50);
  for (size_t i = 0; i < indices.size(); ++i) {
    ASSERT_TRUE(pool.Push(indices[i], i % 2 == 0 ? PoolQueue::kAnyWorker : /*lane_fd=*/5));
    std::unique_lock<std::mutex> lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, kDeadline, [&] { return ran.size() == i + 1; })) << "request " << i << " never ran";
  }
  EXPECT_EQ(ran, indices);
  EXPECT_GT(pool.spin_handoffs(), 0u) << "no push found the worker spinning";
  const auto stop_started = std::chrono::steady_clock::now();
  pool.Stop();  // the worker spins now (the last request ran, nothing more comes)
  EXPECT_LT(std::chrono::steady_clock::now() - stop_started, std::chrono::seconds(5))
      << "Stop waited for the spin to run out";
  EXPECT_EQ(pool.threads_started(), 1u);
}

}  // namespace
}  // namespace kaio::runtime
