// KAIO_* environment variables: defaults, valid values, and a clear message for a malformed one.
#include "kaio/posix_options.h"

#include <map>
#include <string>

#include "gtest/gtest.h"

namespace kaio::posix {
namespace {

absl::StatusOr<PosixOptions> Parse(const std::map<std::string, std::string>& env) {
  return ParseEnvironment([&](const char* name) -> const char* {
    auto it = env.find(name);
    return it == env.end() ? nullptr : it->second.c_str();
  });
}

TEST(PosixOptions, DefaultsWhenNothingIsSet) {
  absl::StatusOr<PosixOptions> o = Parse({});
  ASSERT_TRUE(o.ok()) << o.status();
  ServiceOptions defaults;
  EXPECT_EQ(o->service.queue_depth, defaults.queue_depth);
  EXPECT_EQ(o->service.idle_release, defaults.idle_release);
  EXPECT_EQ(o->service.fallback_threads, defaults.fallback_threads);
  EXPECT_EQ(o->service.max_requests, defaults.max_requests);
  EXPECT_FALSE(o->print_stats);
  EXPECT_FALSE(o->verbose);
  EXPECT_TRUE(o->inline_submit);
}

TEST(PosixOptions, ReadsEveryVariable) {
  absl::StatusOr<PosixOptions> o = Parse({{"KAIO_QUEUE_DEPTH", "256"},
                                          {"KAIO_IDLE_RELEASE_MS", "1500"},
                                          {"KAIO_POOL_THREADS", "0"},
                                          {"KAIO_MAX_REQUESTS", "4096"},
                                          {"KAIO_SUBMIT_BATCH", "32"},
                                          {"KAIO_REAP_BATCH", "16"},
                                          {"KAIO_DEVICE_SUBMIT_CHUNK", "8"},
                                          {"KAIO_POSIX_STATS", "1"},
                                          {"KAIO_POSIX_VERBOSE", "1"},
                                          {"KAIO_INLINE_SUBMIT", "0"}});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->service.queue_depth, 256);
  EXPECT_EQ(o->service.idle_release, absl::Milliseconds(1500));
  EXPECT_EQ(o->service.fallback_threads, 0);
  EXPECT_EQ(o->service.max_requests, 4096);
  EXPECT_EQ(o->service.submit_batch, 32);
  EXPECT_EQ(o->service.reap_batch, 16);
  EXPECT_EQ(o->service.device_submit_chunk, 8);
  EXPECT_TRUE(o->print_stats);
  EXPECT_TRUE(o->verbose);
  EXPECT_FALSE(o->inline_submit);
}

TEST(PosixOptions, AcceptsTheRangeEnds) {
  EXPECT_TRUE(Parse({{"KAIO_QUEUE_DEPTH", "1"}}).ok());
  EXPECT_TRUE(Parse({{"KAIO_QUEUE_DEPTH", "65536"}}).ok());
  EXPECT_TRUE(Parse({{"KAIO_IDLE_RELEASE_MS", "0"}}).ok());
}

TEST(PosixOptions, MalformedValueNamesVariableValueAndRange) {
  for (const char* bad : {"", "abc", "12x", " 12", "12 ", "-1", "+5", "0", "65537", "99999999999999999999", "1.5"}) {
    absl::StatusOr<PosixOptions> o = Parse({{"KAIO_QUEUE_DEPTH", bad}});
    ASSERT_FALSE(o.ok()) << "'" << bad << "'";
    EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
    std::string message(o.status().message());
    EXPECT_NE(message.find("KAIO_QUEUE_DEPTH"), std::string::npos) << message;
    EXPECT_NE(message.find(std::string("'") + bad + "'"), std::string::npos) << message;
    EXPECT_NE(message.find("from 1 to 65536"), std::string::npos) << message;
  }
}

TEST(PosixOptions, EveryVariableIsChecked) {
  for (const char* name : {"KAIO_QUEUE_DEPTH", "KAIO_IDLE_RELEASE_MS", "KAIO_POOL_THREADS", "KAIO_MAX_REQUESTS",
                           "KAIO_SUBMIT_BATCH", "KAIO_REAP_BATCH", "KAIO_DEVICE_SUBMIT_CHUNK", "KAIO_POSIX_STATS",
                           "KAIO_POSIX_VERBOSE", "KAIO_INLINE_SUBMIT"}) {
    absl::StatusOr<PosixOptions> o = Parse({{name, "nope"}});
    ASSERT_FALSE(o.ok()) << name;
    EXPECT_NE(std::string(o.status().message()).find(name), std::string::npos) << o.status();
  }
  EXPECT_FALSE(Parse({{"KAIO_POSIX_STATS", "2"}}).ok());
}

}  // namespace
}  // namespace kaio::posix
