// Engine: the threads behind a kaio Service.
//
//  producers --enqueue--> moodycamel queue --bulk drain--> submitter --io_submit--> kernel AIO
//                                                              |                       |
//                                                   fallback pool (blocking)     eventfd -> reaper
//                                                              |                       |
//                                                              +----> Complete() <-----+--> sink
//
// Threading: Enqueue/Cancel/Stats may be called from any thread. Producers never lock and make no
// syscall unless the submitter sleeps. Submitting (and the io context's life) belongs to whoever
// holds the submit role, reaping to whoever holds the reap role: normally the submitter and the
// reaper threads, but an inline_io requester's thread takes a free role for a moment instead of
// waking a service thread (SubmitInline, ReapInline), so a thread that polls pays no hand-off.
// Complete() is the single place a request reaches kCompleted (one CAS, so exactly once), from
// whichever thread finished it.
//
// Memory ordering: a request's slot passes from hop to hop through its state word (core/request.h:
// release to hand it on, acquire to take it), and the kernel hop through the same word (the
// submitter's release into kInKernel, the reaper's acquire). Beside that the engine runs these
// handshakes, all seq_cst, so that of two sides that race at least one sees the other (most are
// Dekker pairs: each side stores its own variable, then loads the other's):
//  - the submitter's sleep bit (runtime/submit_queue.h): a producer enqueues, then Announces (a
//    seq_cst add) and wakes the submitter if the add saw the bit; the submitter reads the sequence
//    before its drain and, after an empty one, sets the bit by a CAS from it (TrySleep). Every
//    other hop that queues a request (the reaper, SubmitBatch handing one back, Shutdown's kick)
//    announces it the same way.
//  - room_wanted_ vs in_kernel_: the submitter, out of room, stores room_wanted_, then loads
//    in_kernel_; whoever decrements in_kernel_ (reaper, Cancel, SubmitBatch) then loads room_wanted_
//    (OnRoomFreed). Either the submitter sees the room or the decrementer sees the flag and wakes it.
//    (SubmitBatch's wait after an EAGAIN sets the flag without the re-check: that wait is 1 ms at most.)
//  - unsignalled_ vs reaper_watching_: an inline submitter adds to unsignalled_ (before io_submit),
//    then loads reaper_watching_ and writes the eventfd if false (EnsureUnsignalledWatched); the reaper
//    stores reaper_watching_ = false, then loads unsignalled_ again (ReaperLoop). Either the reaper
//    sees the new requests and watches them, or the submitter sees it not watching and wakes it.
//  - reaping_ vs in_kernel_: the reaper stores reaping_ = true, then loads in_kernel_, and reads the
//    context's ring (io_getevents does, in user space) only if the count is not 0; the submitter loads
//    in_kernel_ == 0, then reaping_ == false, before it releases the context (MaybeReleaseContext). The
//    decrement to 0 that the submitter saw comes after any reaper's non-zero load, so after its store.
//  - NothingOutside / LeaveOutside (per fd, fd_order.cc): a lane stores lane_waits, then loads
//    outside[dir]; a request leaving the usual paths decrements outside[dir], then loads lane_waits.
//    Either the lane sees the count at 0 and runs its head, or the leaver sees the flag and calls
//    StreamLanes::Ready (lane_waits is shared by both directions: a Ready for the other one only
//    makes the lane look again, and set the flag again).
//  - accepting() vs Shutdown: a producer stores its sink's accepted + 1, then loads stopping_
//    (accepting()); Shutdown stores stopping_, then loads each sink's accepted. Either the producer
//    sees the stop (and takes its count back) or Shutdown sees the count and waits for the request.
//    A completer adds to its sink's delivered (Deliver), then loads stopping_ and, if set, notifies
//    under sinks_mu_, where Shutdown loads delivered: it sees the delivery or is woken after it.
// The roles are taken by an acquire exchange and given back by a release store, so what a role
// guards passes from holder to holder. Counters, fd_kind_ and kernel_efd_replaced_ are relaxed:
// statistics and hints, through which nothing is published.
//
// Call order: reads and writes on streams (pipes, sockets, ttys) and writes to O_APPEND files run
// one at a time per fd and direction, in the stream lanes (runtime/stream_lanes.h); DispatchOrder
// decides, per request, with a look at the fd only when another request of it is in flight.
//
// Files, one per hop (members of this class, except the parts that are classes of their own:
// SubmitQueue, KernelAio, AioContext, FallbackPool's workers and StreamLanes;
// runtime/engine_internal.h holds the helpers they share):
//   engine.cc         creation and shutdown, the producer side (Claim, Enqueue), Complete, Cancel,
//                     sinks and stats
//   fd_order.cc       which requests keep their call order and go to a lane (DispatchOrder)
//   submit_queue.cc   the producers' queue and the submitter's sleep bit (class SubmitQueue)
//   submitter.cc      the submit queue's drain, submission (SubmitBatch), when to release the context
//   aio_context.cc    the context's life (class AioContext): set-up with its back-off, release
//   reaper.cc         the completion eventfd, reaping, routing each result (RouteKernelResult)
//   kernel_aio.cc     the seam to the kernel (class KernelAio): a context's set-up and release, a batch
//                     submitted, completions reaped, a request cancelled; the only file that
//                     knows Linux AIO's iocb and io_event
//   fallback_pool.cc  the blocking workers (class FallbackPool; pool_queue.h: what they take, in
//                     which order) and what a worker does with a request
//   inline_io.cc      an inline_io requester's thread submitting and reaping; the two roles
//   stream_lanes.cc   the lanes themselves (class StreamLanes)
//
// Lifetime: every sink registered must be unregistered, with nothing outstanding, before the engine
// is destroyed; the destructor stops and joins the threads and releases the io context.
#ifndef KAIO_RUNTIME_ENGINE_H_
#define KAIO_RUNTIME_ENGINE_H_

#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <concurrentqueue/concurrentqueue.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/hidden_fd.h"
#include "core/request.h"
#include "core/slot.h"
#include "core/syscalls.h"
#include "runtime/aio_context.h"
#include "runtime/fallback_pool.h"
#include "runtime/kernel_aio.h"
#include "runtime/stream_lanes.h"
#include "runtime/submit_queue.h"
#include "runtime/write_refusals.h"
#include "kaio/types.h"

namespace kaio::runtime {

class Engine {
 public:
  using ProducerToken = moodycamel::ProducerToken;

  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ServiceOptions& options,
                                                        core::Syscalls* syscalls = nullptr);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  core::SlotTable& slots() { return slots_; }
  core::Syscalls& syscalls() { return sys_; }
  const ServiceOptions& options() const { return options_; }

  // A token for one producer thread (a requester); allocates once.
  std::unique_ptr<ProducerToken> NewProducerToken() { return submit_queue_.NewProducerToken(); }

  // Claims a slot for `sink`, in state kClaimed, with an empty request (core::IoRequest). Returns
  // SlotTable::kNoSlot when max_requests are alive.
  uint32_t Claim(core::CompletionSink& sink, uint64_t tag);
  // Describes the request in a claimed slot, in kaio's terms (core/io_request.h; only the kernel
  // interface, runtime/kernel_aio.h, ever turns it into the kernel's form): its fd, operation,
  // buffer (an iovec array for the vectored ones, nbytes then being the count), offset and the
  // client's serial for its ticket; `file_flags`, the fd's F_GETFL if the client read it just now
  // (-1 if not). Returns the slot's generation.
  uint32_t Describe(uint32_t index, int fd, core::IoOp op, void* buf, uint64_t nbytes, int64_t offset,
                    uint64_t serial, int file_flags = -1);
  // Gives a claimed slot back unsubmitted.
  void Unclaim(uint32_t index);

  // For a client whose sink frees its slots itself (the POSIX layer, which has no mailbox): its own
  // record of each request (core::ClientRecord), the result at delivery, and the slot's release.
  // The client's record of the request in slot `index`, or null for an index no slot has (an index
  // read from a program's memory is checked here first).
  core::ClientRecord* ClientRecordOf(uint32_t index) {
    return slots_.Contains(index) ? &slots_.at(index).client : nullptr;
  }
  // Slots that exist now: a scan of the client records runs up to this.
  uint32_t slot_count() const { return slots_.allocated(); }
  struct Delivered {
    int64_t result;
    uint32_t generation;  // for FreeDelivered
  };
  // In the sink's Deliver(index), on the thread that completed the request: its result.
  Delivered TakeDelivered(uint32_t index) const;
  // Frees the delivered slot of that generation (kCompleted -> kFree). Called once, by whichever of
  // the client's threads is the last to use the slot's record for this request.
  void FreeDelivered(uint32_t index, uint32_t generation);
  // Queues a claimed, filled slot for submission. The caller counted it in sink.accepted already.
  // (Describe and Enqueue are inline, below the class: every request pays their call.)
  void Enqueue(ProducerToken& token, uint32_t index);
  // Hands a claimed, filled slot straight to the blocking pool, for a request the caller knows is
  // bound there (a buffered write to an fd whose RWF_NOWAIT writes the kernel refuses): no submitter
  // hop. Takes the pool's mutex and may start a worker; a write that must keep its call order (an
  // fd of a stream or an O_APPEND file, with another of its requests in flight) goes to its lane
  // instead. Counted in sink.accepted first, as for Enqueue.
  void EnqueueToPool(uint32_t index) { EnqueueToPool(index, nullptr); }

  // Inline I/O (RequesterOptions::inline_io). EnqueueDeferred queues like Enqueue but never wakes
  // the submitter; true means it sleeps, and the caller must call SubmitInline(token) before it
  // waits or returns to its own loop. SubmitInline submits this token's queued requests on the
  // calling thread when the submit role is free and an io context exists, else wakes the
  // submitter. ReapInline reaps the kernel's ring on the calling thread unless another thread is
  // reaping. Neither sleeps; both may call io_submit, take the pool's mutex or start a pool thread.
  // Only requests sent with RWF_NOWAIT are submitted inline, so with fallback_threads == 0 (no
  // NOWAIT) EnqueueDeferred is Enqueue and SubmitInline hands everything to the submitter.
  // With `owner_reap_fd` (an eventfd of the caller's, which it watches whenever it sleeps and after
  // which it calls ReapInlineWaiting), the requests it submits here announce their completion on it
  // instead of the engine's eventfd: the kernel wakes the waiting requester, which reaps, where the
  // reaper thread would be woken to route and then wake it (two context switches and an eventfd
  // write per reaped batch: kaio_bench O_DIRECT qd1 made 2.00 context switches per read, 1.06-1.09
  // after, as a raw io_getevents loop's 1.00). Counted as unsignalled, so the
  // reaper still looks at the ring every millisecond while they are in flight, for whoever else
  // needs them (a full queue, Shutdown, a requester that went to do something else).
  bool EnqueueDeferred(ProducerToken& token, uint32_t index);
  void SubmitInline(ProducerToken& token, int owner_reap_fd = -1);
  // A read done on the calling thread before it becomes a request, for a client whose contract
  // allows a result before the submitting call returns (the POSIX layer): one preadv2(RWF_NOWAIT),
  // only on an fd whose reads kaio has seen complete inside io_submit (page-cache hits). Returns
  // the byte count if it read all `nbytes`; -1 if it did not, and then the caller submits the read
  // the usual way, which reads the range again (a cache miss, a short read at the end of the file,
  // an error, a number reused for a stream or an O_DIRECT file: whatever the usual way answers).
  // Never waits for a device, except once per reuse of a number for an O_DIRECT file (ReadNow).
  int64_t ReadOnCaller(int fd, void* buf, uint64_t nbytes, int64_t offset);
  void ReapInline();
  // As ReapInline, but if another thread holds the reap role, waits for it and reaps after it: for
  // a requester woken on its owner_reap_fd (see SubmitInline), whose completion the holder may have
  // missed (it arrived after the holder's last look), and which nobody else was told of.
  void ReapInlineWaiting();

  // Cancels a request given its ticket generation; InvalidArgument for a stale ticket.
  absl::StatusOr<CancelResult> Cancel(uint32_t index, uint32_t generation);

  // Stops accepting requests (producers check accepting() first) and waits until every
  // registered sink has received every request it was accepted for.
  void Shutdown();
  // seq_cst: a producer counts a request in its sink's `accepted` (seq_cst) before it asks, and
  // Shutdown sets stopping_ before it reads the counts, so either the producer sees the stop and
  // takes its count back (then calls NotifyAcceptedChanged) or Shutdown sees the count and waits.
  bool accepting() const { return !stopping_.load(std::memory_order_seq_cst); }
  void NotifyAcceptedChanged();

  void RegisterSink(core::CompletionSink* sink);
  void UnregisterSink(core::CompletionSink* sink);
  size_t registered_sinks() const;

  ServiceStats Stats() const;

 private:
  friend class StreamLanes;  // completes its requests and hands heads to the pool

  Engine(const ServiceOptions& options, core::Syscalls& sys, int submit_efd, int kernel_efd);
  // Hands a slot in kPoolQueued, marked kSlotStream, to its lane.
  void PushToLane(uint32_t index, StreamLanes::Order order);

  // Call order per fd number (streams and O_APPEND writes; see StreamLanes). Classifying costs a
  // syscall, so it is done only where order could be lost: when a read or write finds another of
  // its fd in flight (or on an fd beyond the table). A lone one goes the usual way ("outside"),
  // and if the kernel then says it would block (a stream), MoveToLane puts it at the head of its
  // lane; a lane's head waits until its fd has nothing outside in its direction. Nothing learned of
  // an fd is remembered past the batch that looked (a cancelled request keeps its fd's count while
  // the program, told it is cancelled, may already reuse the number).
  struct FdOrderState {
    std::atomic<uint32_t> busy{0};        // reads and writes of the fd in flight, lanes included
    std::atomic<uint32_t> outside[2]{};   // of those, on the usual paths: reads, writes
    std::atomic<bool> lane_waits{false};  // a lane waits for an `outside` count to reach 0
  };
  struct KindCache {  // one look per fd in a batch, for fds beyond the table
    int fd = -1;
    StreamLanes::Kind kind = StreamLanes::Kind::kUnknown;
  };
  // Counts a read or write about to be dispatched and says where it goes (kFree: the usual way).
  StreamLanes::Order DispatchOrder(core::Slot& slot, bool lone_may_go, KindCache* cache);
  // A request outside that the kernel refused or cut short: to its lane if its fd keeps order.
  bool MoveToLane(uint32_t index, uint64_t word);
  void LeaveOutside(int fd, core::IoOp op);
  // At completion, before delivery.
  void Uncount(int fd, core::IoOp op, uint32_t flags);
  // For StreamLanes: true if a lane of fd in that direction may run its head; if not, it is told
  // (StreamLanes::Ready) when it may.
  bool NothingOutside(int fd, bool write);

  // Moves a request from `from` to kCompleted with `result` and delivers it. False if it was not in
  // `from` (another thread got there first).
  bool Complete(uint32_t index, core::SlotState from, int64_t result);

  // A write to an fd whose buffered RWF_NOWAIT writes the kernel refuses (write_refusals_): sent to
  // the pool at once (EnqueueToPool), skipping the io_submit that would only be refused. True if so.
  // Inline, the one test a read pays: every request enqueued asks.
  bool WriteGoesStraightToPool(uint32_t index) {
    return core::IsWrite(slots_.at(index).io.op) && WriteSkipsTheKernel(index);
  }
  bool WriteSkipsTheKernel(uint32_t index);
  // EnqueueToPool, with the fd's kind already looked at (or null).
  void EnqueueToPool(uint32_t index, KindCache* looked);

  // Moves a filled slot to kQueued, queues and announces it (SubmitQueue); false if the queue could not
  // take it (then it completed with ENOMEM). *submitter_sleeps: the add saw the sleep bit.
  bool QueueAndAnnounce(ProducerToken& token, uint32_t index, bool* submitter_sleeps);

  void SubmitterLoop();
  // Submits `batch` (the caller holds the submit role). With `requeue` (an inline caller, which
  // must not wait), what the kernel refuses for a full queue goes back to the queue through it
  // and the submitter is woken; without, the submitter waits for room.
  // Returns true if it handed requests back that way (the caller must stop submitting).
  // `owner_reap_fd`: see SubmitInline (-1: the engine's eventfd for all).
  bool SubmitBatch(uint32_t* batch, size_t count, ProducerToken* requeue, int owner_reap_fd = -1);
  // After every decrement of in_kernel_: wakes a submitter that sleeps for room.
  void OnRoomFreed();
  // Roles are held for the length of a drain or a reap; a service thread waits for one, an inline
  // caller only tries.
  static void AcquireRole(std::atomic<bool>& role);
  // release: pairs with AcquireRole's acquire exchange, so the next holder sees what this one wrote.
  static void ReleaseRole(std::atomic<bool>& role) { role.store(false, std::memory_order_release); }
  // After an idle spell (ServiceOptions::idle_release), releases the context if nothing is in the
  // kernel and nobody reaps (the reaping_ vs in_kernel_ handshake above). The submit role's.
  void MaybeReleaseContext(absl::Time now);

  void ReaperLoop();
  // Waits up to timeout_ms for the kernel's eventfd and consumes its count; replaces the eventfd if
  // the program took it (closed, or another file on its number).
  void WaitForCompletions(int timeout_ms);
  // Reaps until the ring is empty; false if io_getevents failed first (events may be left).
  bool ReapAvailable(bool inline_caller);
  // Routes `got` events just taken from the ring (the caller holds the reap role).
  void RouteEvents(const KernelAio::Event* events, int got, bool inline_caller);
  // While requests without the eventfd flag are in the kernel, the reaper looks at the ring often.
  void WatchUnsignalled();
  static constexpr int kWatchLingerLooks = 20;  // about 20 ms
  // After an inline submission: make sure someone will notice unsignalled requests still running.
  void EnsureUnsignalledWatched();
  // What an inline batch's requests were, copied before io_submit: once the kernel has them, they
  // may complete, and a sink that frees slots on delivery (the POSIX layer's) lets another thread
  // claim the slot and rewrite its request while we still look.
  struct Submitted {
    uint32_t index;
    uint32_t generation;  // the slot's: a different one later means it completed and was freed
    int fd;
    bool read_or_write;
  };
  // Learns from an inline batch which fds finish their requests inside io_submit (see fd_kind_).
  void LearnFdKinds(const Submitted* batch, size_t count);
  // The reap role for LearnFdKinds: at once if free; if taken and the batch has an fd of unknown
  // kind, after a short spin (at most 200 us).
  bool TakeReapRoleToLearn(const Submitted* batch, size_t count);
  // What kaio has learned of `fd` (fd_kind_); kFdUntracked for a number beyond the table.
  int FdKindOf(int fd) const {
    // relaxed: a hint (see fd_kind_), through which nothing is published: a stale kind sends a request
    // with or without the eventfd flag needlessly (a wake-up for nothing, or the reaper's 1 ms watch).
    return fd >= 0 && fd < kFdKinds ? fd_kind_[fd].load(std::memory_order_relaxed) : kFdUntracked;
  }
  // The fd's kind for a read done on this thread (ReadNow, ReadOnCaller): an fd never seen is looked
  // at once (F_GETFL), and an async verdict is looked at again now and then (a number reused for a
  // buffered file). Syscalls: at most one F_GETFL (and an fstat) per 256 calls on an async fd.
  int KindForReadHere(int fd);
  bool FdCompletesInline(int fd) const {
    const int kind = FdKindOf(fd);
    return kind == kFdCompletesInline || kind == kFdInlineNoPread;
  }
  // A lone buffered read (a batch of one, on an inline caller's thread or the submitter's) of an fd
  // whose requests complete inside io_submit (an fd never seen is looked at once: not O_DIRECT):
  // tried with preadv2(RWF_NOWAIT) on this thread, the cost of a pread, instead of io_submit,
  // io_getevents and, on the submitter thread, the reaper's wake-up. The slot is in kQueued in
  // `word` (the caller holds the submit role). True if the request is dealt with (completed, or
  // handed to the pool); false if it goes on the usual way, with `word` its current word.
  bool ReadNow(uint32_t index, uint64_t& word);
  // One preadv2(RWF_NOWAIT) on this thread of an fd kaio has seen complete inline (ReadNow,
  // ReadOnCaller), and what its answer teaches of the fd: a slow read of an O_DIRECT file (the
  // number reused) makes it async, ESPIPE (a stream) kFdInlineNoPread. Returns preadv2's answer.
  int64_t PreadHere(int fd, const struct iovec* iov, int iovcnt, int64_t offset);
  // A read here slower than this may have waited for a device: its fd is looked at (PreadHere). A
  // 4 KiB page-cache read takes about 1 us here, an O_DIRECT one on the fastest devices 8 us.
  static constexpr int64_t kReadNowSlowNs = 5000;
  // Gives back the eventfd flag of a request leaving the kernel (or never entering it), in its
  // IoRequest and in the kernel form already built (KernelAio::Resignal).
  void Resignal(core::Slot& slot);
  // Resignal without the count: true if the request was unsignalled, and the caller then takes it
  // off unsignalled_ (RouteEvents: once per reaped batch, not once per request).
  bool ResignalUncounted(core::Slot& slot);
  // Adds 1 to *resignalled for a request that was unsignalled (see ResignalUncounted).
  void RouteKernelResult(uint32_t index, int64_t result, int64_t* resignalled);
  static bool StoppedShort(const core::IoRequest& io, int64_t result);

  // Queues a request in kPoolQueued for a worker (starting one if none is idle and fewer than
  // fallback_threads run); a buffered file write (kSlotFileWrite) waits behind its fd's running one.
  void PoolPush(uint32_t index);
  // A worker's turn with one request (FallbackPool's `run`): runs it (or completes it cancelled)
  // and delivers the result.
  void RunPoolRequest(uint32_t index);

  const ServiceOptions options_;
  core::Syscalls& sys_;
  core::SlotTable slots_;
  core::HiddenFd kernel_efd_;  // the kernel signals completions here; also wakes the reaper to stop
  // The program took kernel_efd_ and it was replaced: requests sent before announce themselves on
  // the old file, so the reaper looks at the ring every millisecond until nothing is in flight.
  std::atomic<bool> kernel_efd_replaced_{false};

  // The producers' queue and the submitter's sleep bit (runtime/submit_queue.h).
  SubmitQueue submit_queue_;

  alignas(64) std::atomic<int64_t> in_kernel_{0};  // requests the kernel took and the reaper has not seen
  std::atomic<bool> room_wanted_{false};  // the submitter sleeps until the kernel queue has room

  // An inline submission leaves the eventfd flag (IOCB_FLAG_RESFD) off the requests on fds whose
  // requests the kernel has so far finished inside io_submit (buffered RWF_NOWAIT reads and
  // writes, pipes, sockets): the submitting thread reaps them at once, and no service thread is
  // woken for them. An fd once seen with a request still running after io_submit returned (O_DIRECT,
  // or a wrong guess after the fd number was reused) is async for good, and until every request
  // sent without the flag is back, the reaper looks at the ring every millisecond.
  // kFdInlineNoPread: completes inside io_submit, but a pread of it says ESPIPE (a pipe, socket,
  // tty): a lone read of it is not tried with preadv2 first (see ReadNow).
  enum FdKind : uint8_t { kFdUnknown = 0, kFdCompletesInline = 1, kFdAsync = 2, kFdInlineNoPread = 3 };
  static constexpr int kFdUntracked = -1;  // FdKindOf: never learned, always signalled
  static constexpr int kFdKinds = 65536;  // fds beyond always get the eventfd flag
  std::unique_ptr<std::atomic<uint8_t>[]> fd_kind_;
  std::unique_ptr<FdOrderState[]> fd_order_;  // kFdKinds entries
  WriteRefusals write_refusals_;
  alignas(64) std::atomic<int64_t> unsignalled_{0};  // requests in the kernel without the flag
  std::atomic<bool> reaper_watching_{false};         // the reaper is in WatchUnsignalled
  std::atomic<bool> watch_wanted_{false};            // woken by EnsureUnsignalledWatched: watch
  std::atomic<bool> reaping_{false};   // the reaper may be inside io_getevents
  bool getevents_failing_ = false;     // guarded by the reap role: the last io_getevents failed
  // The kernel's interface (runtime/kernel_aio.h): its batch is the submit role's, its reaping the
  // reap role's.
  KernelAio kernel_;
  AioContext context_{kernel_, options_.queue_depth};  // its life (runtime/aio_context.h)

  std::atomic<bool> stopping_{false};
  std::atomic<bool> exiting_{false};

  // The roles (see Threading above): acquire when taken, release when given back, so whatever a
  // role guards is handed from holder to holder in order.
  alignas(64) std::atomic<bool> submit_role_{false};
  alignas(64) std::atomic<bool> reap_role_{false};

  // Guarded by the reap role: the reaper re-queues NOWAIT refusals with it.
  std::unique_ptr<ProducerToken> reaper_token_;
  const size_t device_chunk_;  // ServiceOptions::device_submit_chunk, clamped
  // Guarded by the submit role.
  std::vector<Submitted> submit_meta_;  // parallel to kernel_'s batch, for an inline batch
  std::vector<uint32_t> inline_batch_;
  std::vector<Submitted> learn_;        // the requests of an inline batch io_submit accepted
  absl::Time last_kernel_activity_;

  // The blocking workers (runtime/fallback_pool.h).
  FallbackPool pool_{slots_, options_.fallback_threads, [this](uint32_t index) { RunPoolRequest(index); }};

  // Sinks, for Shutdown() and Stats().
  mutable std::mutex sinks_mu_;
  std::condition_variable drained_cv_;
  std::vector<core::CompletionSink*> sinks_;

  // Counters (relaxed: they are statistics, read without ordering).
  struct alignas(64) Counters {
    std::atomic<uint64_t> completed{0}, cancelled{0}, failed{0};
    std::atomic<uint64_t> kernel_submitted{0}, io_submit_calls{0}, io_submit_eagain{0};
    std::atomic<uint64_t> pool_requests{0}, nowait_retries{0}, stream_requests{0};
    std::atomic<int64_t> max_io_submit_ns{0};
    std::atomic<uint64_t> pool_running{0};
    std::atomic<uint64_t> accepted_by_gone_sinks{0};
    std::atomic<uint64_t> inline_submitted{0}, inline_reaped{0}, read_now{0};
  } counters_;

  // Requests whose call order is kept (streams, O_APPEND writes); after the pool's members, since
  // the pool reports to it.
  std::unique_ptr<StreamLanes> lanes_;

  std::thread submitter_;
  std::thread reaper_;
};

inline uint32_t Engine::Describe(uint32_t index, int fd, core::IoOp op, void* buf, uint64_t nbytes, int64_t offset,
                                 uint64_t serial, int file_flags) {
  core::Slot& slot = slots_.at(index);
  slot.file_flags = file_flags;
  slot.io.fd = fd;
  slot.io.op = op;
  slot.io.buf = buf;
  slot.io.nbytes = nbytes;
  slot.io.offset = offset;
  slot.serial.store(serial, std::memory_order_relaxed);  // published with the request (Enqueue's release)
  // relaxed: the claimer owns the slot; the word is its own since Claim.
  return core::WordGeneration(core::LookOwn(slot));
}

inline void Engine::Enqueue(ProducerToken& token, uint32_t index) {
  if (WriteGoesStraightToPool(index)) return;
  bool submitter_sleeps = false;
  if (QueueAndAnnounce(token, index, &submitter_sleeps) && submitter_sleeps) submit_queue_.WakeOnce();
}

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_ENGINE_H_
