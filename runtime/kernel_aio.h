// KernelAio: the engine's one seam to the kernel's asynchronous interface, Linux AIO (io_setup,
// io_submit, io_getevents, io_cancel, through core::Syscalls so tests can inject faults). The hops
// speak kaio's terms only: a context to set up and release, a batch of slots whose requests
// (core::IoRequest) are submitted, completions as (slot index, result), one request cancelled.
// The kernel's own forms (iocb, io_event, the eventfd flag) stay in kernel_aio.cc; a second
// interface (io_uring, say) would be a second class with these members, and no hop would change.
//
// Threading: the batch (StartBatch, Add, Submit, the signal-fd calls) belongs to whoever holds the
// engine's submit role; Reap to whoever holds the reap role; Setup and Release to the submit role
// too (the engine's handshakes decide when a context may be released); Cancel may be called from
// any thread for a request in the kernel. The object keeps no state shared between those.
//
// Memory ordering: none of its own. Add reads the request and writes the slot's aio_cb while the
// submit-role holder has the slot in kQueued, before its Move into kInKernel (a canceller may move
// it to kCancelledQueued meanwhile, but touches neither; the entry is then dropped). What the
// kernel does is invisible to the memory model, and the engine's slot transitions order it
// (core/slot.h).
#ifndef KAIO_RUNTIME_KERNEL_AIO_H_
#define KAIO_RUNTIME_KERNEL_AIO_H_

#include <libaio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/slot.h"
#include "core/syscalls.h"

namespace kaio::runtime {

class KernelAio {
 public:
  using Context = uintptr_t;  // 0: none
  struct Event {
    uint32_t index;  // the request's slot
    int64_t result;  // a count, or -errno
  };

  // Batches of up to max_batch requests; Reap returns up to max_events completions at a time.
  KernelAio(core::Syscalls& sys, core::SlotTable& slots, size_t max_batch, size_t max_events);
  KernelAio(const KernelAio&) = delete;
  KernelAio& operator=(const KernelAio&) = delete;

  // A context for up to `depth` requests in flight: 0 and *ctx, or -errno.
  int Setup(int depth, Context* ctx);
  void Release(Context ctx);

  // Submission. StartBatch empties the batch; Add appends the request in slot `index` (read from its
  // IoRequest now; the slot index travels with it to its completion), announcing its completion on
  // `signal_fd` if the request's `signal` is set. Submit hands entries [from, from + count) to the
  // kernel in one call: how many it took (from `from` on), or -errno for the first one it refused.
  void StartBatch() { batch_size_ = 0; }
  void Add(uint32_t index, int signal_fd);
  // Takes back the entry Add appended last (its request was cancelled before it went in).
  void DropLast() { --batch_size_; }
  // A request the kernel does not hold (refused, or done) announces its completion on `signal_fd`
  // again, also in the form Add already built: SubmitBatch sends a built entry again as it is
  // after EINTR, or after waiting for room.
  void Resignal(core::Slot& slot, int signal_fd);
  size_t batch_size() const { return batch_size_; }
  uint32_t BatchIndex(size_t i) const;
  int Submit(Context ctx, size_t from, size_t count);
  // The eventfd entry i announces its completion on, or -1 if none; and re-pointing the entries
  // from `from` on at another (the program closed or replaced the old one).
  int BatchSignalFd(size_t i) const;
  void RepointSignals(size_t from, int signal_fd);

  // Completions the kernel has ready, without waiting: how many (into *events, valid until the
  // next Reap), or -errno.
  int Reap(Context ctx, const Event** events);

  // Cancels the request in slot `index` (in the kernel): 0 with its result in *result (old kernels
  // hand it back here), -EINPROGRESS when it will complete through Reap, or -errno.
  int Cancel(Context ctx, uint32_t index, int64_t* result);

 private:
  core::Syscalls& sys_;
  core::SlotTable& slots_;
  std::vector<struct iocb*> batch_;  // the submit role's
  size_t batch_size_ = 0;
  std::vector<struct io_event> kernel_events_;  // the reap role's
  std::vector<Event> events_;                   // the reap role's
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_KERNEL_AIO_H_
