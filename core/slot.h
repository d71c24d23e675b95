// Request slots: a fixed-address slab of requests, each with a generation and an atomic state.
//
// A request lives in one Slot from submission until its completion is consumed:
//   free -> claimed -> queued -> in kernel | pool queued -> pool running -> completed -> (returned) -> free
// (a stream lane's request goes pool queued <-> stream trying until it completes),
// with cancelled-queued as a side exit from queued / pool queued. The transitions are the named
// functions of core/request.h, the only writers of Slot::word besides the free stack here. Slot::word
// packs the generation with the state, so a stale ticket can never move a reused slot. A state that
// several threads may leave (queued, pool queued, in kernel, every live state into completed) is
// left only by compare-and-swap, so exactly one thread wins (which is what makes every request
// complete exactly once); a state only its holder can leave (claimed, stream trying, completed for
// the owner's Return) is left by a plain release store.
//
// Memory ordering: a transition that hands the slot to another thread is a release store or RMW;
// the thread that takes it over observes it with an acquire load or RMW. The kernel is invisible to TSan, so
// the submitter's release (queued -> in kernel happens before io_submit) and the reaper's acquire
// RMW (in kernel -> completed) provide the happens-before edge the kernel hand-off lacks.
#ifndef KAIO_CORE_SLOT_H_
#define KAIO_CORE_SLOT_H_

#include <libaio.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>

#include "core/io_request.h"

namespace kaio::core {

enum class SlotState : uint32_t {
  kFree = 0,
  kClaimed,          // a producer describes the request
  kQueued,           // in the submitter's queue
  kCancelledQueued,  // cancelled before it ran; whoever holds it completes it with ECANCELED
  kInKernel,         // handed to io_submit
  kPoolQueued,       // waiting for a fallback worker
  kPoolRunning,      // a fallback worker runs it
  kStreamTrying,     // tried without blocking (a stream lane's attempt, ReadNow): a few microseconds at most
  kCompleted,        // result stored and routed to its sink
  kReturned,         // the owner took the result through Return(); freed when its mailbox drains it
};

// Packs and unpacks Slot::word.
constexpr uint64_t PackWord(uint32_t generation, SlotState state) {
  return (uint64_t{generation} << 32) | static_cast<uint32_t>(state);
}
constexpr uint32_t WordGeneration(uint64_t word) { return static_cast<uint32_t>(word >> 32); }
constexpr SlotState WordState(uint64_t word) { return static_cast<SlotState>(word & 0xffffffffu); }

// Tickets are (generation << 32) | index; generations start at 1, so no ticket is ever 0.
constexpr uint64_t PackTicket(uint32_t generation, uint32_t index) {
  return (uint64_t{generation} << 32) | index;
}
constexpr uint32_t TicketIndex(uint64_t ticket) { return static_cast<uint32_t>(ticket); }
constexpr uint32_t TicketGeneration(uint64_t ticket) { return static_cast<uint32_t>(ticket >> 32); }
constexpr uint32_t NextGeneration(uint32_t generation) {
  return generation == UINT32_MAX ? 1 : generation + 1;
}

class CompletionSink;

// What a client keeps of its own per request, in the request's slot (the POSIX layer: its aiocb,
// sigevent, lio_listio group and cancel state), so that no client needs a table beside the slots.
// The engine never reads, writes or clears it, and it stays as it is when the slot is freed and
// claimed again: a client may keep there what other threads read at any time, also while the
// slot is being reused (the POSIX layer's scans for aio_cancel(fd, NULL) and aio_fsync).
//   words: atomics any thread may read (0 until the client first stores them);
//   bytes: what only the request's holder reads, copied in and out (trivially copyable objects),
//          ordered by the slot's hand-offs like the request.
struct ClientRecord {
  static constexpr size_t kWords = 3;
  static constexpr size_t kBytes = 64;
  std::atomic<uint64_t> words[kWords]{};
  alignas(16) unsigned char bytes[kBytes]{};
};

// Slot flags: how the request may be run.
enum SlotFlags : uint32_t {
  kSlotNowait = 1u << 0,      // submitted with RWF_NOWAIT; EAGAIN means "would block", not an error
  kSlotForcePool = 1u << 1,   // run it in the fallback pool
  kSlotForceKernel = 1u << 2, // known not to block the submitter (O_DIRECT): no RWF_NOWAIT retry
  kSlotUnsignalled = 1u << 3, // in the kernel not announcing itself on the engine's eventfd (none, or its requester's)
  kSlotStream = 1u << 4,      // in a runtime::StreamLanes lane: run in call order, one at a time
  kSlotCounted = 1u << 5,     // counted in its fd's order bookkeeping (Engine::DispatchOrder)
  kSlotOutside = 1u << 6,     // ... on the usual paths (kernel, pool), not in a lane
  kSlotFileWrite = 1u << 7,   // a buffered write to a regular file: the pool runs its fd's one at a time
};

struct alignas(64) Slot {
  IoRequest io;                         // the request, in kaio's terms (core/io_request.h)
  std::atomic<uint64_t> word{0};        // generation << 32 | state
  std::atomic<uint32_t> free_next{0};   // free-stack link (index + 1); atomic: read by racing pops
  uint32_t mailbox_next = 0;            // sink's link (index + 1), written before a release publish
  uint32_t local_prev = 0;              // owner-private FIFO links (index + 1)
  uint32_t local_next = 0;
  uint32_t flags = 0;
  uint32_t pool_next = 0;               // the pool's per-fd write lane link (index + 1), under its mutex
  // The fd's fcntl(F_GETFL) as the client read it when it described the request, or -1: spares the
  // engine the same syscall when it looks at the fd (StreamLanes::Classify).
  int32_t file_flags = -1;
  bool in_local_list = false;           // owner-private
  // Written before the seq_cst move into kCompleted. Atomic (relaxed) only because Error() may read
  // it from any thread while a stale ticket's slot is being reused; the word orders it.
  std::atomic<int64_t> result{0};
  uint64_t tag = 0;
  // Bytes a RWF_NOWAIT attempt already moved before the rest went to the pool (reaper, then worker).
  uint64_t partial = 0;
  // Where the completion goes; outlives the request. Atomic for the same reason as result.
  std::atomic<CompletionSink*> sink{nullptr};
  // The request's serial number (kaio::Ticket::serial), unique in the process: what tells a live
  // ticket from a stale or foreign one whose slot and generation happen to match (another service's
  // table, or the 32-bit generation wrapped). Written by the claiming requester before the release
  // that publishes the request; relaxed everywhere, since a reader that is not the owner only
  // compares it, and any value it may see other than its ticket's means "not this request".
  std::atomic<uint64_t> serial{0};
  // The kernel interface's own form of the request while the kernel has it (Linux AIO's iocb,
  // written at submission by runtime/kernel_aio.cc; io_cancel needs its address): no hop reads it.
  struct iocb aio_cb;
  // The client's own record of the request (see ClientRecord): last, on lines of its own, since
  // the engine never touches it (the client writes it when it describes a request and reads it at
  // delivery; its scans read the words at any time).
  alignas(64) ClientRecord client;
};

// The slab. Slots never move: chunks of kChunkSize are allocated as the number of live requests
// grows (never per request) and freed only with the table. Acquire/Release are lock-free (a Treiber
// stack with an ABA tag); growing takes a mutex, once per chunk.
class SlotTable {
 public:
  static constexpr uint32_t kChunkBits = 10;
  static constexpr uint32_t kChunkSize = 1u << kChunkBits;
  static constexpr uint32_t kNoSlot = UINT32_MAX;

  explicit SlotTable(uint32_t max_slots);
  ~SlotTable();
  SlotTable(const SlotTable&) = delete;
  SlotTable& operator=(const SlotTable&) = delete;

  // A free slot's index, its state still kFree; kNoSlot when max_slots are all in use.
  uint32_t Acquire();
  // Returns a slot whose word the caller already moved to kFree.
  void Release(uint32_t index);
  // Moves a slot from `expected` (generation and state) to free with the next generation and
  // returns it to the free stack. False if the slot was not in `expected` (nothing changed).
  bool Free(uint32_t index, uint64_t expected);

  Slot& at(uint32_t index) const {
    // acquire: pairs with the release store that published the chunk in Grow().
    return chunks_[index >> kChunkBits].load(std::memory_order_acquire)[index & (kChunkSize - 1)];
  }
  // True if index names a slot that exists (tickets from outside are checked with this first).
  bool Contains(uint32_t index) const {
    // acquire: pairs with Grow()'s release store of allocated_, so the chunk of every index below it is
    // published.
    return index < allocated_.load(std::memory_order_acquire);
  }
  // acquire: as in Contains().
  uint32_t allocated() const { return allocated_.load(std::memory_order_acquire); }

 private:
  uint32_t TryPop();
  uint32_t Grow();

  const uint32_t max_slots_;
  const uint32_t max_chunks_;
  std::unique_ptr<std::atomic<Slot*>[]> chunks_;
  std::atomic<uint32_t> allocated_{0};
  // (tag << 32) | (index + 1); the tag changes on every pop so a stale head cannot be re-installed.
  std::atomic<uint64_t> free_head_{0};
  std::mutex grow_mu_;
};

// Where completed requests go. Deliver() is called exactly once per request, by whichever thread
// completed it (reaper, submitter, fallback worker, canceller), after the slot reached kCompleted.
class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  virtual void Deliver(uint32_t index) = 0;

  // Requests accepted for this sink and requests delivered to it; shutdown and the sink's owner
  // wait until they match. On separate cache lines: producers write one, completers the other.
  alignas(64) std::atomic<uint64_t> accepted{0};
  alignas(64) std::atomic<uint64_t> delivered{0};
  // This sink's buffered file writes a fallback worker is running now (a completion microseconds
  // away: a requester waiting for one naps rather than sleeps, runtime::Client::Wait). relaxed,
  // both sides: a hint, through which nothing is published.
  std::atomic<uint32_t> pool_running{0};
};

}  // namespace kaio::core

#endif  // KAIO_CORE_SLOT_H_
