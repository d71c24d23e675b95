// posix/records.h: what the POSIX layer keeps per request. A Request is an aiocb as read at
// submission. A Record is the POSIX side of one engine slot, in a table (Records) parallel to the
// engine's slots and indexed the same way: the aiocb, its sigevent, its lio_listio group, and the
// atomics other threads may read at any time (fd, kind, state). A Dep names one record's request
// (slot and generation), for the orderer and aio_fsync. A LioGroup counts a list's members.
//
// Threading: Records::Ensure may be called from any thread (a mutex guards a chunk's allocation);
// TryAt and at never block. A Record's atomics may be read by any thread at any time, also while
// its slot is being reused (aio_cancel(fd, NULL) and aio_fsync scan every record); its plain fields
// belong to whoever holds the request.
//
// Memory ordering: a chunk is published with a release store and found with an acquire load. A
// record's plain fields are written before its slot is queued and read by whoever finalizes the
// request, ordered by the engine's slot transitions or by the canceller's CAS on `state`; `state`
// is stored with release after the fields (State::Prepare), so a scanner that acquires it sees them.
//
// Relies on: core/slot.h (the slots' chunk size, kNoSlot, the slot flags a Request carries).
#ifndef KAIO_POSIX_RECORDS_H_
#define KAIO_POSIX_RECORDS_H_

#include <aio.h>
#include <stdint.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>

#include "core/slot.h"
#include "posix/notifier.h"

namespace kaio::posix {

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

enum class Op : uint8_t { kNone = 0, kRead, kWrite, kFsync, kFdsync };

// The engine's opcode for `op` (IO_CMD_NOOP for kNone).
short IoOpcode(Op op);

inline bool IsSync(Op op) { return op == Op::kFsync || op == Op::kFdsync; }

// A lio_listio(LIO_NOWAIT) with a sigevent: notified when `pending` reaches 0. The caller holds one
// count while it submits, so members finishing early cannot fire it before the list is queued.
struct LioGroup {
  std::atomic<int> pending{1};
  Notification notification;
};

struct Request {
  struct aiocb* cb = nullptr;
  Op op = Op::kNone;
  int fd = -1;
  char* buf = nullptr;
  uint64_t nbytes = 0;
  int64_t offset = 0;
  Notification notification;
  LioGroup* group = nullptr;
  int file_flags = -1;  // a write's fcntl(F_GETFL) of fd at submission (-1: not read), for the engine
};

// Record::state = generation << kStateShift | RecordBits.
constexpr int kStateShift = 8;
enum RecordBits : uint64_t {
  kCancelWon = 1,    // aio_cancel publishes ECANCELED; Deliver must not touch the aiocb
  kDelivered = 2,    // the engine delivered the slot
  kCancelDone = 4,   // the winning canceller is finished with the record
  kFinal = 8,        // the aiocb holds its final result
};

struct alignas(64) Record {
  std::atomic<uint64_t> state{0};
  // Read by scans (aio_cancel(fd, NULL), aio_fsync) of slots that may be reused under them: atomic.
  std::atomic<int> fd{-1};
  std::atomic<Op> op{Op::kNone};
  std::atomic<struct aiocb*> cb{nullptr};
  // Plain: written before the slot is queued; read by whoever finalizes (ordered by the engine's
  // slot transitions, or by the canceller's CAS on `state`).
  Notification notification;
  LioGroup* group = nullptr;
};

// Records parallel to the engine's slots, allocated in the same chunks, lazily.
class Records {
 public:
  static constexpr uint32_t kChunkBits = core::SlotTable::kChunkBits;
  static constexpr uint32_t kChunkSize = core::SlotTable::kChunkSize;

  explicit Records(uint32_t max_slots)
      : max_chunks_((max_slots + kChunkSize - 1) / kChunkSize), chunks_(new std::atomic<Record*>[max_chunks_]) {
    // relaxed: the table is not shared yet (its State is published by g_state's release store).
    for (uint32_t i = 0; i < max_chunks_; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
  }
  ~Records() {
    // relaxed: a destructor runs when no other thread can use the table.
    for (uint32_t i = 0; i < max_chunks_; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
  }
  Records(const Records&) = delete;
  Records& operator=(const Records&) = delete;

  Record* TryAt(uint32_t index) const {
    uint32_t chunk = index >> kChunkBits;
    if (chunk >= max_chunks_) return nullptr;
    // acquire: pairs with the release that published the chunk.
    Record* records = chunks_[chunk].load(std::memory_order_acquire);
    return records == nullptr ? nullptr : &records[index & (kChunkSize - 1)];
  }
  Record& at(uint32_t index) const { return *TryAt(index); }
  Record& Ensure(uint32_t index) {
    if (Record* r = TryAt(index)) return *r;
    std::lock_guard<std::mutex> lock(mu_);
    uint32_t chunk = index >> kChunkBits;
    // relaxed: under mu_, which every store of a chunk pointer holds: the mutex orders this load.
    Record* records = chunks_[chunk].load(std::memory_order_relaxed);
    if (records == nullptr) {
      records = new Record[kChunkSize];
      // release: pairs with TryAt's acquire: a thread that finds the chunk finds its Records built.
      chunks_[chunk].store(records, std::memory_order_release);
    }
    return records[index & (kChunkSize - 1)];
  }

 private:
  const uint32_t max_chunks_;
  std::unique_ptr<std::atomic<Record*>[]> chunks_;
  std::mutex mu_;
};

struct Dep {
  uint32_t index;
  uint32_t generation;
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_RECORDS_H_
