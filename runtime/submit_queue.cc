// SubmitQueue (see submit_queue.h): the submitter's wake-up eventfd.
#include "runtime/submit_queue.h"

#include <poll.h>

#include <algorithm>

#include "runtime/engine_internal.h"

namespace kaio::runtime {

std::atomic<uint64_t> QueueTraits::allocations{0};

SubmitQueue::SubmitQueue(core::Syscalls& sys, int wake_efd) : sys_(sys), wake_efd_(wake_efd, MakeEventfd) {}

void SubmitQueue::Wake() {
  int rc = sys_.EventFdWrite(wake_efd_.get(), 1);
  // EAGAIN means the counter is saturated, i.e. already readable. EBADF: the program closed it;
  // the submitter's bounded wait ends within kIdleLookMs and replaces it.
  (void)rc;
}

void SubmitQueue::WaitForWork(absl::Time deadline) {
  const int fd = wake_efd_.get();
  struct pollfd pfd = {fd, POLLIN, 0};
  int timeout_ms = core::kIdleLookMs;
  if (deadline != absl::InfiniteFuture()) {
    timeout_ms = static_cast<int>(std::clamp<int64_t>(
        absl::ToInt64Milliseconds(absl::Ceil(deadline - absl::Now(), absl::Milliseconds(1))), 0, timeout_ms));
  }
  const int got = poll(&pfd, 1, timeout_ms);
  if (got > 0 && !(pfd.revents & POLLNVAL)) {
    uint64_t value;
    sys_.EventFdRead(fd, &value);
  } else if (got == 0 || (pfd.revents & POLLNVAL)) {
    wake_efd_.RepairIfLost(fd);  // one fstat per idle second
  }
}

}  // namespace kaio::runtime
