// Tickets name one request of one requester of one service (issue 14). Before, a ticket was the
// slot's (generation << 32) | index alone: the first request of two services had the same ticket,
// so service B's requester took A's ticket for its own live request (Return gave B's answer and
// consumed it); Cancel took another requester's ticket and cancelled that request; and after 2^32
// reuses of one slot a stale ticket named the slot's new request.
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "gtest/gtest.h"
#include "core/slot.h"
#include "kaio/requester.h"
#include "kaio/service.h"
#include "runtime/engine.h"
#include "runtime/service_access.h"
#include "tests/test_util.h"

namespace kaio {
namespace {

using ::kaio::testing::TempFile;

constexpr absl::Duration kDeadline = absl::Seconds(20);

std::unique_ptr<Service> MakeService(ServiceOptions options = {}) {
  auto s = Service::Create(options);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

std::unique_ptr<Requester> MakeRequester(Service& service) {
  auto r = Requester::Create(service);
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *std::move(r) : nullptr;
}

TEST(Ticket, AnotherServicesTicketIsNotALiveRequestHere) {
  TempFile file(8192);
  auto a_service = MakeService(), b_service = MakeService();
  ASSERT_TRUE(a_service && b_service);
  auto a = MakeRequester(*a_service), b = MakeRequester(*b_service);
  ASSERT_TRUE(a && b);
  char a_buf[100], b_buf[200];
  auto ta = a->Read(file.fd(), a_buf, sizeof(a_buf), 0);
  auto tb = b->Read(file.fd(), b_buf, sizeof(b_buf), 0);
  ASSERT_TRUE(ta.ok() && tb.ok());
  ASSERT_EQ(ta->slot(), tb->slot()) << "the same slot and generation in both tables: what made them alias";
  EXPECT_NE(*ta, *tb);
  ASSERT_TRUE(b->WaitAll({*tb}, kDeadline).ok());
  EXPECT_EQ(b->Error(*ta), EINVAL);
  EXPECT_EQ(b->Return(*ta), -EINVAL);  // before: 200, b's answer, and b's own ticket went stale
  EXPECT_FALSE(b->Cancel(*ta).ok());
  EXPECT_EQ(b->WaitAll({*ta}, absl::ZeroDuration()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(b->Return(*tb), 200);
  ASSERT_TRUE(a->WaitAll({*ta}, kDeadline).ok());
  EXPECT_EQ(a->Return(*ta), 100);
}

TEST(Ticket, CancelRefusesAnotherRequestersTicket) {
  auto service = MakeService();
  ASSERT_TRUE(service);
  auto owner = MakeRequester(*service), other = MakeRequester(*service);
  ASSERT_TRUE(owner && other);
  int p[2];
  ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
  char buf[8];
  auto t = owner->Read(p[0], buf, sizeof(buf), 0);  // waits: the pipe is empty
  ASSERT_TRUE(t.ok());
  absl::StatusOr<CancelResult> c = other->Cancel(*t);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);  // before: kCanceled
  EXPECT_EQ(owner->Error(*t), EINPROGRESS);
  ASSERT_EQ(write(p[1], "abc", 3), 3);
  ASSERT_TRUE(owner->WaitAll({*t}, kDeadline).ok());
  EXPECT_EQ(owner->Return(*t), 3);
  close(p[0]);
  close(p[1]);
}

TEST(Ticket, AWrappedGenerationDoesNotMakeAStaleTicketLive) {
  TempFile file(8192);
  ServiceOptions options;
  options.max_requests = 1;  // every request in slot 0
  auto service = MakeService(options);
  ASSERT_TRUE(service);
  auto io = MakeRequester(*service);
  ASSERT_TRUE(io);
  char buf[64];
  auto stale = io->Read(file.fd(), buf, sizeof(buf), 0);
  ASSERT_TRUE(stale.ok());
  ASSERT_TRUE(io->WaitAll({*stale}, kDeadline).ok());
  EXPECT_EQ(io->Return(*stale), 64);
  // 2^32 requests later (about two hours at 1M a second on one slot) the generation is back where
  // it was: set it there directly, the slot free as the requester left it.
  core::Slot& slot = runtime::ServiceAccess::EngineOf(*service).slots().at(core::TicketIndex(stale->slot()));
  const uint64_t word = slot.word.load(std::memory_order_acquire);
  ASSERT_EQ(core::WordState(word), core::SlotState::kFree);
  slot.word.store(core::PackWord(core::TicketGeneration(stale->slot()), core::SlotState::kFree),
                  std::memory_order_release);
  auto live = io->Read(file.fd(), buf, 32, 0);
  ASSERT_TRUE(live.ok());
  ASSERT_EQ(live->slot(), stale->slot());
  ASSERT_TRUE(io->WaitAll({*live}, kDeadline).ok());
  EXPECT_EQ(io->Error(*stale), EINVAL);
  EXPECT_EQ(io->Return(*stale), -EINVAL);  // before: 32, the live request's answer
  EXPECT_EQ(io->Return(*live), 32);
}

}  // namespace
}  // namespace kaio
