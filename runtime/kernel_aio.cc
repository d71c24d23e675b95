// KernelAio (see kernel_aio.h): kaio's requests as Linux AIO iocbs, and the kernel's io_events as
// kaio's completions.
#include "runtime/kernel_aio.h"

#include <errno.h>
#include <sys/uio.h>

#include <cstring>

namespace kaio::runtime {

namespace {

// IOCB_FLAG_RESFD of <linux/aio_abi.h> (which clashes with <libaio.h>): libaio's io_set_eventfd sets it.
constexpr unsigned kIocbFlagResfd = 1u << 0;

// Linux AIO's opcode for each core::IoOp, in the enum's order (kNone: IO_CMD_NOOP, which the kernel
// answers with EINVAL, as any opcode it does not know).
constexpr short kOpcodes[] = {IO_CMD_NOOP,   IO_CMD_PREAD, IO_CMD_PWRITE, IO_CMD_PREADV,
                              IO_CMD_PWRITEV, IO_CMD_FSYNC, IO_CMD_FDSYNC};
static_assert(static_cast<size_t>(core::IoOp::kFdsync) + 1 == sizeof(kOpcodes) / sizeof(kOpcodes[0]));
static_assert(kOpcodes[static_cast<size_t>(core::IoOp::kRead)] == IO_CMD_PREAD);
static_assert(kOpcodes[static_cast<size_t>(core::IoOp::kWritev)] == IO_CMD_PWRITEV);

short OpcodeOf(core::IoOp op) { return kOpcodes[static_cast<size_t>(op)]; }

uint32_t IndexOf(const struct iocb& cb) { return static_cast<uint32_t>(reinterpret_cast<uintptr_t>(cb.data)); }

}  // namespace

KernelAio::KernelAio(core::Syscalls& sys, core::SlotTable& slots, size_t max_batch, size_t max_events)
    : sys_(sys), slots_(slots), batch_(max_batch), kernel_events_(max_events), events_(max_events) {}

int KernelAio::Setup(int depth, Context* ctx) {
  io_context_t io_ctx = nullptr;
  const int rc = sys_.IoSetup(depth, &io_ctx);
  if (rc < 0) return rc;
  *ctx = reinterpret_cast<Context>(io_ctx);
  return 0;
}

void KernelAio::Release(Context ctx) { sys_.IoDestroy(reinterpret_cast<io_context_t>(ctx)); }

void KernelAio::Add(uint32_t index, int signal_fd) {
  core::Slot& slot = slots_.at(index);
  const core::IoRequest& io = slot.io;
  struct iocb& cb = slot.aio_cb;
  std::memset(&cb, 0, sizeof(cb));
  cb.data = reinterpret_cast<void*>(static_cast<uintptr_t>(index));
  cb.aio_fildes = io.fd;
  cb.aio_lio_opcode = OpcodeOf(io.op);
  cb.u.c.buf = io.buf;
  cb.u.c.nbytes = io.nbytes;
  cb.u.c.offset = io.offset;
  if (io.nowait) cb.aio_rw_flags = RWF_NOWAIT;
  if (io.signal) io_set_eventfd(&cb, signal_fd);
  batch_[batch_size_++] = &cb;
}

void KernelAio::Resignal(core::Slot& slot, int signal_fd) {
  slot.io.signal = true;
  io_set_eventfd(&slot.aio_cb, signal_fd);
}

uint32_t KernelAio::BatchIndex(size_t i) const { return IndexOf(*batch_[i]); }

int KernelAio::Submit(Context ctx, size_t from, size_t count) {
  return sys_.IoSubmit(reinterpret_cast<io_context_t>(ctx), static_cast<long>(count), batch_.data() + from);
}

int KernelAio::BatchSignalFd(size_t i) const {
  const struct iocb& cb = *batch_[i];
  return (cb.u.c.flags & kIocbFlagResfd) ? static_cast<int>(cb.u.c.resfd) : -1;
}

void KernelAio::RepointSignals(size_t from, int signal_fd) {
  for (size_t i = from; i < batch_size_; ++i) {
    if (batch_[i]->u.c.flags & kIocbFlagResfd) batch_[i]->u.c.resfd = static_cast<unsigned>(signal_fd);
  }
}

int KernelAio::Reap(Context ctx, const Event** events) {
  struct timespec zero = {0, 0};
  const int got = sys_.IoGetEvents(reinterpret_cast<io_context_t>(ctx), 0, static_cast<long>(kernel_events_.size()),
                                   kernel_events_.data(), &zero);
  for (int i = 0; i < got; ++i) {
    // Errors are a negative res; res2 is 0 and carries no error.
    events_[static_cast<size_t>(i)] =
        Event{static_cast<uint32_t>(reinterpret_cast<uintptr_t>(kernel_events_[static_cast<size_t>(i)].data)),
              static_cast<long>(kernel_events_[static_cast<size_t>(i)].res)};
  }
  *events = events_.data();
  return got;
}

int KernelAio::Cancel(Context ctx, uint32_t index, int64_t* result) {
  if (ctx == 0) return -EINVAL;
  struct io_event event = {};
  const int rc = sys_.IoCancel(reinterpret_cast<io_context_t>(ctx), &slots_.at(index).aio_cb, &event);
  if (rc == 0) *result = static_cast<long>(event.res);
  return rc;
}

}  // namespace kaio::runtime
