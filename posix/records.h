// posix/records.h: what the POSIX layer keeps per request. A Request is an aiocb as read at
// submission. A Record is the POSIX side of one engine slot, kept in the slot itself (the engine's
// core::ClientRecord, which it never touches): the aiocb, its sigevent, its lio_listio group, and
// the atomics other threads may read at any time (fd, kind, state). A Dep names one record's
// request (slot and generation), for the orderer and aio_fsync. A LioGroup counts a list's members.
//
// Threading: a Record's atomics may be read by any thread at any time, also while its slot is
// being reused (aio_cancel(fd, NULL) and aio_fsync scan every slot); its plain part belongs to
// whoever holds the request.
//
// Memory ordering: a record's plain part is written before its slot is queued and read by whoever
// finalizes the request, ordered by the engine's slot transitions or by the canceller's CAS on
// `state`; `state` is stored with release after the rest (State::Prepare), so a scanner that
// acquires it sees them.
//
// Relies on: core/slot.h (ClientRecord, kNoSlot).
#ifndef KAIO_POSIX_RECORDS_H_
#define KAIO_POSIX_RECORDS_H_

#include <aio.h>
#include <stdint.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "core/slot.h"
#include "posix/notifier.h"

namespace kaio::posix {

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

enum class Op : uint8_t { kNone = 0, kRead, kWrite, kFsync, kFdsync };

// The engine's operation for `op`.
core::IoOp IoOpcode(Op op);

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

// What only the request's holder reads (the finalizer: Deliver or the winning canceller).
struct RecordPlain {
  Notification notification;
  LioGroup* group = nullptr;
};

// The POSIX side of one request: a view of its engine slot's client record (core::ClientRecord),
// which the engine keeps as it is across the slot's reuse. Its words:
//   state       generation << kStateShift | RecordBits: the cancel/deliver handshake;
//   fd and op   one word (fd in the low 32 bits, op above), so a scan reads a consistent pair;
//   cb          the aiocb.
// The scans read them at any time, also while the slot is being reused; the plain part
// (RecordPlain) is copied in by Prepare before the slot is queued and out by the finalizer,
// ordered by the engine's slot transitions or by the canceller's CAS on `state`.
class Record {
 public:
  explicit Record(core::ClientRecord& client) : client_(client) {}

  std::atomic<uint64_t>& state() const { return client_.words[0]; }

  // relaxed, all four: published by the release store of `state` (Prepare), which a scanner or
  // canceller acquires before it reads them, and to the request's completer by the slot's
  // release hand-off.
  void SetTarget(int fd, Op op, struct aiocb* cb) const {
    client_.words[1].store(uint64_t{static_cast<uint32_t>(fd)} | uint64_t{static_cast<uint8_t>(op)} << 32,
                           std::memory_order_relaxed);
    client_.words[2].store(reinterpret_cast<uintptr_t>(cb), std::memory_order_relaxed);
  }
  int fd() const { return static_cast<int>(static_cast<uint32_t>(client_.words[1].load(std::memory_order_relaxed))); }
  Op op() const { return static_cast<Op>(static_cast<uint8_t>(client_.words[1].load(std::memory_order_relaxed) >> 32)); }
  struct aiocb* cb() const {
    return reinterpret_cast<struct aiocb*>(static_cast<uintptr_t>(client_.words[2].load(std::memory_order_relaxed)));
  }

  void SetPlain(const RecordPlain& plain) const { std::memcpy(client_.bytes, &plain, sizeof(plain)); }
  RecordPlain plain() const {
    RecordPlain plain;
    std::memcpy(&plain, client_.bytes, sizeof(plain));
    return plain;
  }

 private:
  static_assert(std::is_trivially_copyable_v<RecordPlain>, "copied in and out of the slot's bytes");
  static_assert(sizeof(RecordPlain) <= core::ClientRecord::kBytes, "RecordPlain must fit the slot's bytes");
  static_assert(alignof(RecordPlain) <= alignof(core::ClientRecord), "RecordPlain's alignment");
  static_assert(core::ClientRecord::kWords >= 3, "state, fd and op, cb");

  core::ClientRecord& client_;
};

struct Dep {
  uint32_t index;
  uint32_t generation;
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_RECORDS_H_
