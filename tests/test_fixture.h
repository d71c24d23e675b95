// The setup kaio's service-level tests share: a Service (over a fault-injecting Syscalls when the
// test brings one), Requesters of it, a wait for one completion, and reads of a TempFile's blocks
// checked against its pattern (what warms a service up: the io context exists and the submitter has
// gone to sleep). Error model: a helper that cannot make what it was asked for fails the test
// (ADD_FAILURE) and returns null; a helper whose name says it checks (ReadBlocks) uses fatal
// assertions, so callers that must stop on them wrap it in ASSERT_NO_FATAL_FAILURE.
#ifndef KAIO_TESTS_TEST_FIXTURE_H_
#define KAIO_TESTS_TEST_FIXTURE_H_

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "core/syscalls.h"
#include "gtest/gtest.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "runtime/service_access.h"
#include "tests/test_util.h"

namespace kaio::testing {

inline constexpr size_t kBlock = 4096;
// How long a test waits for a completion before it calls it lost.
inline constexpr absl::Duration kDeadline = absl::Seconds(20);

// A service with `options`; null (and a test failure) if it cannot be created.
inline std::unique_ptr<Service> NewService(const ServiceOptions& options = {}) {
  auto service = Service::Create(options);
  if (!service.ok()) {
    ADD_FAILURE() << service.status();
    return nullptr;
  }
  return *std::move(service);
}

// The same, with every kernel call going through `sys` (which must outlive the service).
inline std::unique_ptr<Service> NewService(core::Syscalls& sys, const ServiceOptions& options = {}) {
  auto service = runtime::ServiceAccess::CreateWithSyscalls(options, &sys);
  if (!service.ok()) {
    ADD_FAILURE() << service.status();
    return nullptr;
  }
  return *std::move(service);
}

// A requester of `service`; null (and a test failure) if it cannot be created.
inline std::unique_ptr<Requester> NewRequester(Service& service, const RequesterOptions& options = {}) {
  auto requester = Requester::Create(service, options);
  if (!requester.ok()) {
    ADD_FAILURE() << requester.status();
    return nullptr;
  }
  return *std::move(requester);
}

// A requester that submits and reaps on its own polling thread (RequesterOptions::inline_io).
inline std::unique_ptr<Requester> NewInlineRequester(Service& service) {
  RequesterOptions options;
  options.inline_io = true;
  return NewRequester(service, options);
}

// The next completion; a test failure (and a default Completion) if none comes within `timeout`.
inline Completion WaitOne(Requester& requester, absl::Duration timeout = kDeadline) {
  Completion c;
  size_t n = requester.Wait(absl::MakeSpan(&c, 1), 1, timeout);
  EXPECT_EQ(n, 1u) << "no completion within the timeout";
  return c;
}

// `count` block-sized, block-aligned buffers.
inline std::vector<AlignedBuffer> BlockBuffers(int count) {
  std::vector<AlignedBuffer> bufs;
  bufs.reserve(static_cast<size_t>(count));
  for (int i = 0; i < count; ++i) bufs.emplace_back(kBlock);
  return bufs;
}

// Reads `count` blocks of `file` from block `first` into bufs[0..count), tagged 0..count-1, waits for
// all of them and checks every byte count and, every 511 bytes, the file's pattern.
inline void ReadBlocks(Requester& requester, const TempFile& file, std::vector<AlignedBuffer>& bufs, int first,
                       int count) {
  for (int i = 0; i < count; ++i) {
    auto t = requester.Read(file.fd(), bufs[i].data(), kBlock, static_cast<int64_t>(first + i) * kBlock, i);
    ASSERT_TRUE(t.ok()) << t.status();
  }
  std::vector<Completion> done(static_cast<size_t>(count));
  ASSERT_EQ(requester.Wait(absl::MakeSpan(done), done.size(), kDeadline), done.size());
  for (const Completion& c : done) {
    ASSERT_EQ(c.result, static_cast<int64_t>(kBlock)) << "tag " << c.tag;
    const uint64_t base = (first + c.tag) * kBlock;
    for (size_t b = 0; b < kBlock; b += 511) {
      ASSERT_EQ(bufs[c.tag].data()[b], TempFile::PatternByte(base + b)) << "tag " << c.tag << " byte " << b;
    }
  }
}

// Reads the first `size` bytes of `file` with pread, so later buffered reads of them hit the page cache.
inline void CacheInPageCache(const TempFile& file, size_t size) {
  std::vector<char> warm(size);
  ASSERT_EQ(pread(file.fd(), warm.data(), warm.size(), 0), static_cast<ssize_t>(warm.size()));
}

}  // namespace kaio::testing

#endif  // KAIO_TESTS_TEST_FIXTURE_H_
