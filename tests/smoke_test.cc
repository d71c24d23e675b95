#include <libaio.h>
#include <concurrentqueue/concurrentqueue.h>
#include "absl/status/status.h"
#include "gtest/gtest.h"
TEST(Smoke, Works) { io_context_t c{}; ASSERT_EQ(io_setup(8, &c), 0); io_destroy(c); moodycamel::ConcurrentQueue<int> q; q.enqueue(1); EXPECT_TRUE(absl::OkStatus().ok()); }
