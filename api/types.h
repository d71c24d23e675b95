// kaio/types.h: the value types shared by kaio's C++ API: tickets, completions, options, statistics.
//
// All types here are plain values: copyable, no hidden sharing, safe to pass between threads.
#ifndef KAIO_API_TYPES_H_
#define KAIO_API_TYPES_H_

#include <cstdint>
#include <string>

#include "absl/time/time.h"

namespace kaio {

// Names one request of one requester. A ticket holds the request's slot (index and generation) and
// its serial number, which is unique in the process for its whole life (64 bits, never reused:
// requesters take them in blocks from one counter). Every call that takes a ticket answers EINVAL
// (or INVALID_ARGUMENT) for a ticket that is not a live request of that very requester: consumed
// (by Poll/Wait or Return), another requester's, another service's, or made up. The empty ticket
// (default-constructed) is never valid. Tickets compare and order as values, so they can key maps.
class Ticket {
 public:
  constexpr Ticket() = default;
  // The two words a ticket is made of, for code that keeps tickets as numbers (tests, fuzzers).
  constexpr Ticket(uint64_t slot, uint64_t serial) : slot_(slot), serial_(serial) {}
  constexpr uint64_t slot() const { return slot_; }
  constexpr uint64_t serial() const { return serial_; }
  constexpr bool valid() const { return serial_ != 0; }
  friend constexpr bool operator==(Ticket a, Ticket b) { return a.slot_ == b.slot_ && a.serial_ == b.serial_; }
  friend constexpr bool operator!=(Ticket a, Ticket b) { return !(a == b); }
  friend constexpr bool operator<(Ticket a, Ticket b) {
    return a.serial_ != b.serial_ ? a.serial_ < b.serial_ : a.slot_ < b.slot_;
  }

 private:
  uint64_t slot_ = 0;    // (generation << 32) | index in the service's request table
  uint64_t serial_ = 0;  // unique in the process; 0 only in the empty ticket
};

// One finished request, as Poll and Wait hand it back.
struct Completion {
  Ticket ticket;
  uint64_t tag = 0;     // the caller's tag, given at submission
  int64_t result = 0;   // bytes transferred (a short read is a result, not an error), or -errno
  bool ok() const { return result >= 0; }
  int error() const { return result < 0 ? static_cast<int>(-result) : 0; }
};

// What Cancel did, with POSIX's three answers (AIO_CANCELED, AIO_NOTCANCELED, AIO_ALLDONE).
enum class CancelResult {
  kCanceled,     // never reached the kernel (or the kernel stopped it): completes with ECANCELED
  kNotCanceled,  // already running; its real result will be delivered
  kAllDone,      // already finished
};

struct ServiceOptions {
  // Kernel queue depth (io_setup's nr_events), like the seed's "aio num events". More requests than
  // this wait in kaio's queue; none fails for that reason.
  int queue_depth = 128;
  // The io context is released after this long with no request in flight, and re-created on demand.
  absl::Duration idle_release = absl::Seconds(30);
  // Most requests drained (and passed to io_submit, see device_submit_chunk) per batch, and most
  // events taken by one io_getevents.
  int submit_batch = 64;
  int reap_batch = 64;
  // Requests that go to a device (any fd not yet seen finishing its requests inside io_submit, e.g.
  // O_DIRECT) are passed to io_submit at most this many at a time: the block layer holds a call's
  // requests back from the device until the call returns (about 5 us of kernel work each on a
  // virtio disk), and large calls made O_DIRECT reads at iodepth 32 finish in waves (measured: 0.7x
  // fio's IOPS with calls of 32, 1.1x with 4, at the same CPU per I/O). Page-cache hits are not
  // split: for them one call per batch is cheapest. At least 1; above submit_batch it is submit_batch.
  int device_submit_chunk = 4;
  // Most requests alive at once (submitted and not yet consumed). Slots are allocated in chunks of
  // 1024 as needed, never per request; past this (exactly), submission answers RESOURCE_EXHAUSTED.
  int max_requests = 1 << 20;
  // Blocking workers for what kernel AIO would run synchronously (buffered misses, ttys, O_APPEND
  // writes). Started lazily; 0 means such requests block the submitter instead (not recommended),
  // except ttys and O_APPEND writes, which still start one worker. Pipes and sockets never need one:
  // they wait for readiness in the stream lanes.
  int fallback_threads = 4;
  // Names and CPUs (-1: no pinning) for the service's own threads.
  std::string submitter_thread_name = "kaio-submit";
  std::string reaper_thread_name = "kaio-reap";
  int submitter_cpu = -1;
  int reaper_cpu = -1;
};

// Counters are updated by the thread that does the work, without ordering against completions: a
// completion can reach its requester a moment before the submitter counts its io_submit call.
struct ServiceStats {
  uint64_t requests_accepted = 0;   // requests the service took from requesters
  uint64_t requests_completed = 0;  // completions delivered to mailboxes (every kind)
  uint64_t requests_cancelled = 0;  // completed with ECANCELED
  uint64_t requests_failed = 0;     // completed with another errno
  uint64_t in_flight = 0;           // accepted and not completed
  uint64_t kernel_submitted = 0;    // iocbs the kernel accepted
  uint64_t io_submit_calls = 0;
  double average_batch = 0;         // kernel_submitted / io_submit_calls
  uint64_t io_submit_eagain = 0;    // times io_submit said the kernel queue was full
  uint64_t pool_requests = 0;       // requests run by the blocking fallback pool
  uint64_t nowait_retries = 0;      // RWF_NOWAIT requests the kernel refused with EAGAIN
  uint64_t stream_requests = 0;     // reads and writes run in call order: pipes, sockets, ttys, O_APPEND
  int64_t max_io_submit_ns = 0;     // the longest single io_submit call
  uint64_t contexts_created = 0;
  uint64_t contexts_released = 0;   // released after the idle time
  uint64_t pool_threads = 0;        // fallback threads started so far
  uint64_t pool_running = 0;        // requests a fallback thread is running right now
  uint64_t queue_block_allocations = 0;  // memory blocks the request queues allocated (process-wide)
  uint64_t inline_submitted = 0;    // of kernel_submitted: submitted on an inline_io requester's thread
  uint64_t inline_reaped = 0;       // kernel completions reaped on an inline_io requester's thread
  uint64_t read_now = 0;            // lone page-cache reads done by preadv2 in place of io_submit
};

}  // namespace kaio

#endif  // KAIO_API_TYPES_H_
