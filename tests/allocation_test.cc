// Steady state allocates nothing per request: every operator new in the process is counted, and so
// are the request queue's own blocks (it allocates through malloc, via QueueTraits).
#include <fcntl.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <vector>

#include "gtest/gtest.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "tests/test_util.h"

namespace {
std::atomic<uint64_t> g_news{0};
}  // namespace

// These replace the global operators, so malloc/free pair correctly here. gcc 12 at -O2 (the CMake
// build) inlines them into callers and then warns that free() gets a pointer from operator new.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t size) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t size) { return operator new(size); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace kaio {
namespace {

// Both ways of submitting: through kaio's threads, and inline_io on the requester's own thread (over
// the page cache, where inline submission and reaping do all the work).
class Allocation : public ::testing::TestWithParam<bool> {};

TEST_P(Allocation, SteadyStateAllocatesNothingPerRequest) {
  const bool inline_io = GetParam();
  if (!inline_io) KAIO_SKIP_UNLESS_O_DIRECT();  // the service threads' case reads an O_DIRECT file
  auto service = Service::Create({});
  ASSERT_TRUE(service.ok());
  RequesterOptions options;
  options.inline_io = inline_io;
  auto requester = Requester::Create(**service, options);
  ASSERT_TRUE(requester.ok());
  constexpr int kDepth = 16;
  testing::TempFile file(64 * 4096, inline_io ? 0 : O_DIRECT);
  testing::AlignedBuffer buf(kDepth * 4096);
  std::vector<Completion> done(kDepth);
  auto round = [&](int r) {
    for (int i = 0; i < kDepth; ++i) {
      auto t = (*requester)->Read(file.fd(), buf.data() + i * 4096, 4096, ((r + i) % 64) * 4096);
      ASSERT_TRUE(t.ok());
    }
    size_t got = (*requester)->Wait(absl::MakeSpan(done), kDepth, absl::Seconds(30));
    ASSERT_EQ(got, static_cast<size_t>(kDepth));
    for (const Completion& c : done) ASSERT_EQ(c.result, 4096);
  };
  for (int r = 0; r < 500; ++r) round(r);  // warm up: slots, queue blocks, io context
  uint64_t news_before = g_news.load();
  uint64_t blocks_before = (*service)->Stats().queue_block_allocations;
  constexpr int kRounds = 2000;
  for (int r = 0; r < kRounds; ++r) round(r);
  uint64_t news = g_news.load() - news_before;
  uint64_t blocks = (*service)->Stats().queue_block_allocations - blocks_before;
  EXPECT_EQ(news, 0u) << "operator new calls during " << kRounds * kDepth << " requests";
  EXPECT_EQ(blocks, 0u) << "queue blocks allocated during " << kRounds * kDepth << " requests";
  ServiceStats stats = (*service)->Stats();
  if (inline_io) {
    EXPECT_GT(stats.inline_reaped, static_cast<uint64_t>(kRounds * kDepth / 2)) << "not the inline path";
  } else {
    EXPECT_EQ(stats.pool_requests, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(SubmitPaths, Allocation, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? std::string("InlineIo") : std::string("ServiceThreads");
                         });

}  // namespace
}  // namespace kaio
