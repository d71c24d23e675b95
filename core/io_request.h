// IoRequest: one request in kaio's own terms, as a client described it (Engine::Describe) and as
// the hops run it. No hop sees the kernel's form of a request (Linux AIO's iocb): only the kernel
// interface (runtime/kernel_aio.h) turns an IoRequest into one when it submits it, so a second
// interface could be added beside it without touching the hops.
//
// Threading: an IoRequest lives in its slot (core/slot.h) and belongs to whoever holds the slot;
// it is handed from hop to hop with the slot's state word, like everything else in the slot.
#ifndef KAIO_CORE_IO_REQUEST_H_
#define KAIO_CORE_IO_REQUEST_H_

#include <sys/uio.h>

#include <cstdint>

namespace kaio::core {

enum class IoOp : uint8_t { kNone = 0, kRead, kWrite, kReadv, kWritev, kFsync, kFdsync };

inline bool IsReadOrWrite(IoOp op) {
  return op == IoOp::kRead || op == IoOp::kWrite || op == IoOp::kReadv || op == IoOp::kWritev;
}
inline bool IsWrite(IoOp op) { return op == IoOp::kWrite || op == IoOp::kWritev; }
inline bool IsRead(IoOp op) { return op == IoOp::kRead || op == IoOp::kReadv; }
inline bool IsVectored(IoOp op) { return op == IoOp::kReadv || op == IoOp::kWritev; }

struct IoRequest {
  void* buf = nullptr;   // the bytes; for a vectored op, its iovec array
  uint64_t nbytes = 0;   // bytes; for a vectored op, the iovec count
  int64_t offset = 0;    // file offset (ignored on streams, whose lanes read and write in order)
  int fd = -1;
  IoOp op = IoOp::kNone;
  // Submitted so that the kernel refuses what would block (RWF_NOWAIT) instead of blocking.
  bool nowait = false;
  // Its completion announces itself on the engine's completion eventfd (off for a request an inline
  // caller reaps at once: see Engine::fd_kind_).
  bool signal = true;
};

// Bytes the request asks for (the sum of the iovec lengths for a vectored one).
inline uint64_t RequestBytes(const IoRequest& io) {
  if (!IsVectored(io.op)) return io.nbytes;
  const auto* iov = static_cast<const struct iovec*>(io.buf);
  uint64_t total = 0;
  for (uint64_t i = 0; i < io.nbytes; ++i) total += iov[i].iov_len;
  return total;
}

}  // namespace kaio::core

#endif  // KAIO_CORE_IO_REQUEST_H_
