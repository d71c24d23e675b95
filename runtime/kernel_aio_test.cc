// KernelAio on its own, against a recording Syscalls: kaio's requests become the iocbs Linux AIO
// expects (opcode, buffer, offset, RWF_NOWAIT, the eventfd flag), the slot index travels to the
// completion, a lost eventfd is re-pointed only where it was asked for, and io_cancel gets the
// address of the iocb the kernel was given.
#include "runtime/kernel_aio.h"

#include <errno.h>
#include <libaio.h>
#include <sys/uio.h>

#include <cstdint>
#include <vector>

#include "core/io_request.h"
#include "core/slot.h"
#include "core/syscalls.h"
#include "gtest/gtest.h"

namespace kaio::runtime {
namespace {

constexpr unsigned kResfd = 1u << 0;  // IOCB_FLAG_RESFD

class RecordingSyscalls : public core::Syscalls {
 public:
  int IoSubmit(io_context_t ctx, long nr, struct iocb** iocbs) override {
    last_ctx = ctx;
    submitted.assign(iocbs, iocbs + nr);
    return accept < 0 ? static_cast<int>(nr) : accept;
  }
  int IoGetEvents(io_context_t, long min_nr, long nr, struct io_event* events, struct timespec* timeout) override {
    EXPECT_EQ(min_nr, 0) << "Reap never waits";
    EXPECT_NE(timeout, nullptr);
    EXPECT_EQ(timeout->tv_sec, 0);
    EXPECT_EQ(timeout->tv_nsec, 0);
    int n = 0;
    for (; n < nr && n < static_cast<int>(ready.size()); ++n) events[n] = ready[static_cast<size_t>(n)];
    return n;
  }
  int IoCancel(io_context_t, struct iocb* iocb, struct io_event* result) override {
    cancelled = iocb;
    result->res = static_cast<unsigned long>(-ECANCELED);
    return 0;
  }
  io_context_t last_ctx = nullptr;
  int accept = -1;  // -1: all
  std::vector<struct iocb*> submitted;
  std::vector<struct io_event> ready;
  struct iocb* cancelled = nullptr;
};

class KernelAioTest : public ::testing::Test {
 protected:
  uint32_t Describe(core::IoOp op, void* buf, uint64_t nbytes, int64_t offset, bool nowait, bool signal) {
    const uint32_t index = slots_.Acquire();
    EXPECT_NE(index, core::SlotTable::kNoSlot);
    core::IoRequest& io = slots_.at(index).io;
    io = core::IoRequest{buf, nbytes, offset, /*fd=*/42, op, nowait, signal};
    return index;
  }
  RecordingSyscalls sys_;
  core::SlotTable slots_{64};
  KernelAio kernel_{sys_, slots_, /*max_batch=*/8, /*max_events=*/4};
};

TEST_F(KernelAioTest, AddWritesTheIocbLinuxAioExpects) {
  char buf[4096];
  struct iovec iov[2] = {{buf, 100}, {buf + 100, 200}};
  const uint32_t read = Describe(core::IoOp::kRead, buf, sizeof buf, 8192, /*nowait=*/true, /*signal=*/true);
  const uint32_t writev = Describe(core::IoOp::kWritev, iov, 2, 4096, /*nowait=*/false, /*signal=*/false);
  const uint32_t fsync = Describe(core::IoOp::kFdsync, nullptr, 0, 0, false, true);
  kernel_.StartBatch();
  kernel_.Add(read, /*signal_fd=*/7);
  kernel_.Add(writev, 7);
  kernel_.Add(fsync, 7);
  ASSERT_EQ(kernel_.batch_size(), 3u);
  EXPECT_EQ(kernel_.BatchIndex(0), read);
  EXPECT_EQ(kernel_.BatchIndex(2), fsync);
  ASSERT_EQ(kernel_.Submit(/*ctx=*/0x1234, 0, 3), 3);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(sys_.last_ctx), 0x1234u);
  ASSERT_EQ(sys_.submitted.size(), 3u);

  const struct iocb& r = *sys_.submitted[0];
  EXPECT_EQ(&r, &slots_.at(read).aio_cb) << "the kernel gets the slot's own iocb (io_cancel needs its address)";
  EXPECT_EQ(r.aio_lio_opcode, IO_CMD_PREAD);
  EXPECT_EQ(r.aio_fildes, 42);
  EXPECT_EQ(r.u.c.buf, buf);
  EXPECT_EQ(r.u.c.nbytes, sizeof buf);
  EXPECT_EQ(r.u.c.offset, 8192);
  EXPECT_EQ(r.aio_rw_flags, RWF_NOWAIT);
  EXPECT_TRUE(r.u.c.flags & kResfd);
  EXPECT_EQ(r.u.c.resfd, 7u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(r.data), read) << "the slot index travels to the completion";

  const struct iocb& w = *sys_.submitted[1];
  EXPECT_EQ(w.aio_lio_opcode, IO_CMD_PWRITEV);
  EXPECT_EQ(w.u.c.buf, iov);
  EXPECT_EQ(w.u.c.nbytes, 2u) << "a vectored request's count";
  EXPECT_EQ(w.aio_rw_flags, 0);
  EXPECT_FALSE(w.u.c.flags & kResfd) << "an unsignalled request wakes nobody";
  EXPECT_EQ(kernel_.BatchSignalFd(1), -1);

  EXPECT_EQ(sys_.submitted[2]->aio_lio_opcode, IO_CMD_FDSYNC);
}

TEST_F(KernelAioTest, SubmitHandsOnTheRangeAskedForAndAddStartsClean) {
  char buf[512];
  const uint32_t a = Describe(core::IoOp::kWrite, buf, 512, 0, true, true);
  const uint32_t b = Describe(core::IoOp::kWrite, buf, 512, 512, true, true);
  kernel_.StartBatch();
  kernel_.Add(a, 7);
  kernel_.Add(b, 7);
  sys_.accept = 1;
  EXPECT_EQ(kernel_.Submit(1, /*from=*/1, /*count=*/1), 1);
  ASSERT_EQ(sys_.submitted.size(), 1u);
  EXPECT_EQ(sys_.submitted[0], &slots_.at(b).aio_cb);
  // A request submitted again (after a refusal) is written afresh: no stale RWF_NOWAIT.
  slots_.at(a).io.nowait = false;
  kernel_.StartBatch();
  kernel_.Add(a, 7);
  EXPECT_EQ(slots_.at(a).aio_cb.aio_rw_flags, 0);
  kernel_.DropLast();
  EXPECT_EQ(kernel_.batch_size(), 0u);
}

TEST_F(KernelAioTest, RepointSignalsMovesOnlySignalledEntriesFromTheGivenOne) {
  char buf[512];
  const uint32_t first = Describe(core::IoOp::kRead, buf, 512, 0, true, true);
  const uint32_t quiet = Describe(core::IoOp::kRead, buf, 512, 0, true, false);
  const uint32_t last = Describe(core::IoOp::kRead, buf, 512, 0, true, true);
  kernel_.StartBatch();
  for (uint32_t index : {first, quiet, last}) kernel_.Add(index, 7);
  kernel_.RepointSignals(/*from=*/1, 9);
  EXPECT_EQ(kernel_.BatchSignalFd(0), 7) << "entries before `from` keep theirs";
  EXPECT_EQ(kernel_.BatchSignalFd(1), -1) << "an unsignalled entry stays unsignalled";
  EXPECT_EQ(kernel_.BatchSignalFd(2), 9);
}

TEST_F(KernelAioTest, ReapGivesSlotIndicesAndResultsAndCancelNamesTheSlotsIocb) {
  sys_.ready.resize(5);
  for (size_t i = 0; i < sys_.ready.size(); ++i) {
    sys_.ready[i].data = reinterpret_cast<void*>(uintptr_t{10 + i});
    sys_.ready[i].res = i == 1 ? static_cast<unsigned long>(-EAGAIN) : 4096;
  }
  const KernelAio::Event* events = nullptr;
  ASSERT_EQ(kernel_.Reap(1, &events), 4) << "at most max_events at a time";
  EXPECT_EQ(events[0].index, 10u);
  EXPECT_EQ(events[0].result, 4096);
  EXPECT_EQ(events[1].result, -EAGAIN) << "errors are a negative result";
  EXPECT_EQ(events[3].index, 13u);

  char buf[512];
  const uint32_t index = Describe(core::IoOp::kRead, buf, 512, 0, true, true);
  int64_t result = 0;
  EXPECT_EQ(kernel_.Cancel(/*ctx=*/0, index, &result), -EINVAL) << "no context, nothing in the kernel";
  EXPECT_EQ(sys_.cancelled, nullptr);
  ASSERT_EQ(kernel_.Cancel(1, index, &result), 0);
  EXPECT_EQ(sys_.cancelled, &slots_.at(index).aio_cb);
  EXPECT_EQ(result, -ECANCELED);
}

}  // namespace
}  // namespace kaio::runtime
