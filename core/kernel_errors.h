// The kernel's answers to io_submit, classified in one place: what the engine does with each errno
// of a request the kernel refused.
#ifndef KAIO_CORE_KERNEL_ERRORS_H_
#define KAIO_CORE_KERNEL_ERRORS_H_

#include <errno.h>

namespace kaio::core {

// Kernel errors, classified in one place.
enum class SubmitErrorClass {
  kRetryLater,     // EAGAIN: the kernel's queue is full
  kInterrupted,    // EINTR: just try again
  kUnsupported,    // the fd cannot take RWF_NOWAIT or kernel AIO: run it in the pool
  kFailRequest,    // EBADF, EINVAL, EFBIG...: this request fails, the batch goes on
};

inline SubmitErrorClass ClassifySubmitError(int negative_errno, bool nowait) {
  switch (-negative_errno) {
    case EAGAIN:
      return SubmitErrorClass::kRetryLater;
    case EINTR:
      return SubmitErrorClass::kInterrupted;
    case EOPNOTSUPP:
      return nowait ? SubmitErrorClass::kUnsupported : SubmitErrorClass::kFailRequest;
    default:
      return SubmitErrorClass::kFailRequest;
  }
}

}  // namespace kaio::core

#endif  // KAIO_CORE_KERNEL_ERRORS_H_
