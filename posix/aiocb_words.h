// posix/aiocb_words.h: kaio's words in a program's struct aiocb, the one piece of the POSIX layer's
// state that lives in the program's memory.
//
// A request's results go to glibc's own fields, __return_value and __error_code, so aio_error and
// aio_return are loads. kaio keeps two words of its own in __glibc_reserved: word 0, the ticket of
// the request's current engine slot (for aio_cancel); word 1, the owner (a magic number and the
// pid), which tells kaio's aiocbs from never-submitted ones and from a parent's after fork().
//
// Threading: any thread, at any time, a signal handler included (no lock, no allocation): every
// access is an __atomic builtin on the aiocb. kaio writes an aiocb from the moment it accepts it
// (MarkInProgress) until it publishes the result (Publish); a refusal writes it once (MarkFailed).
// All inline, so that aio_error, which programs call in loops, is two loads and no call.
//
// Memory ordering: Publish stores __return_value, then __error_code with a seq_cst store; a reader
// that loads the final __error_code (LoadError: acquire unless told; InProgress: seq_cst) then sees
// the return value and the bytes the request moved. The ticket word is stored release and loaded
// acquire; the owner word is stored release, after the fields it vouches for.
//
// Relies on: glibc's LP64 layout of struct aiocb (checked below) and nothing else of kaio's.
// g_pid, CurrentPid's cache, is set at start-up and in a fork() child by posix/startup.cc.
#ifndef KAIO_POSIX_AIOCB_WORDS_H_
#define KAIO_POSIX_AIOCB_WORDS_H_

#include <aio.h>
#include <errno.h>
#include <stddef.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace kaio::posix {

// On LP64 glibc, struct aiocb and struct aiocb64 are the same layout, so one implementation serves
// both names. kaio keeps two words in __glibc_reserved (32 bytes, 8-aligned).
static_assert(sizeof(struct aiocb) == sizeof(struct aiocb64));
static_assert(offsetof(struct aiocb, aio_offset) == offsetof(struct aiocb64, aio_offset));
static_assert(offsetof(struct aiocb, __error_code) == offsetof(struct aiocb64, __error_code));
static_assert(offsetof(struct aiocb, __glibc_reserved) == offsetof(struct aiocb64, __glibc_reserved));
static_assert(sizeof(static_cast<struct aiocb*>(nullptr)->__glibc_reserved) >= 16);
static_assert(offsetof(struct aiocb, __glibc_reserved) % 8 == 0);

typedef uint64_t __attribute__((may_alias)) AliasedWord;

inline AliasedWord* MetaWord(const struct aiocb* cb, int i) {
  return reinterpret_cast<AliasedWord*>(const_cast<char*>(cb->__glibc_reserved) + 8 * i);
}

// Word 0: the ticket (generation << 32 | slot) of the request's current slot; kTicketPending while
// the orderer holds it back; 0 when it has none.
constexpr uint64_t kTicketPending = ~uint64_t{0};
// acquire / release: State::Prepare fills the slot's Record (its fields, then its state)
// before StoreTicket publishes the ticket, so a canceller that loads a ticket finds that Record (of
// this generation, or a later one). kTicketPending and 0 publish nothing: the orderer's mutex and
// the owner word order those.
inline uint64_t LoadTicket(const struct aiocb* cb) { return __atomic_load_n(MetaWord(cb, 0), __ATOMIC_ACQUIRE); }
inline void StoreTicket(struct aiocb* cb, uint64_t ticket) {
  __atomic_store_n(MetaWord(cb, 0), ticket, __ATOMIC_RELEASE);
}

// Word 1: the owner: kOwnerMagic | pid.
constexpr uint64_t kOwnerMagic = uint64_t{0x6b61696f} << 32;  // "kaio"
constexpr uint64_t kOwnerPidMask = 0xffffffff;
// acquire: pairs with the owner's release store in MarkInProgress / MarkFailed, which comes after
// the error code and the ticket it vouches for, so a thread that loads the owner this call stored
// reads those (or a later result), not what the aiocb held before it was submitted here.
inline uint64_t LoadOwner(const struct aiocb* cb) { return __atomic_load_n(MetaWord(cb, 1), __ATOMIC_ACQUIRE); }

// The pid CurrentPid answers, cached (posix/aiocb_words.cc): 0 until first needed; set again at
// start-up and in a fork() child (posix/startup.cc).
extern std::atomic<int> g_pid;

inline int CurrentPid() {
  // relaxed: a cache of getpid() that publishes nothing. Every store in a process writes that
  // process's pid (a fork child's AtforkChild, while the child has one thread), so a load returns
  // the right pid, or 0 and then getpid() answers.
  int pid = g_pid.load(std::memory_order_relaxed);
  if (pid == 0) {
    pid = static_cast<int>(getpid());
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

inline uint64_t OwnerWord() { return kOwnerMagic | (static_cast<uint64_t>(CurrentPid()) & kOwnerPidMask); }

// True if kaio accepted this aiocb in this process (and it is not from before a fork).
inline bool Ours(const struct aiocb* cb) {
  uint64_t owner = LoadOwner(cb);
  return owner == OwnerWord();
}

// acquire by default: pairs with Publish's seq_cst store of the error code (a release), so a caller
// that reads the final error code then reads __return_value and the bytes the request moved. A
// waiter passes __ATOMIC_SEQ_CST instead (InProgress).
inline int LoadError(const struct aiocb* cb, int order = __ATOMIC_ACQUIRE) {
  return __atomic_load_n(&cb->__error_code, order);
}

inline bool InProgress(const struct aiocb* cb) {
  // seq_cst: waiters re-check after announcing themselves (see WakeWaiters).
  return Ours(cb) && LoadError(cb, __ATOMIC_SEQ_CST) == EINPROGRESS;
}

inline void MarkInProgress(struct aiocb* cb) {
  // relaxed: the submitting thread alone writes the aiocb here. These stores reach the completer
  // (so its Publish follows them in each field's modification order) through the slot's release
  // hand-off or the orderer's mutex, and other readers through the owner's release below.
  __atomic_store_n(&cb->__return_value, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&cb->__error_code, EINPROGRESS, __ATOMIC_RELAXED);
  StoreTicket(cb, 0);
  // release: after the fields the owner word vouches for (pairs with LoadOwner's acquire).
  __atomic_store_n(MetaWord(cb, 1), OwnerWord(), __ATOMIC_RELEASE);
}

// The request's final result: bytes, or -errno.
inline void Publish(struct aiocb* cb, int64_t result) {
  // relaxed: released by the error code's seq_cst store below, which readers acquire.
  __atomic_store_n(&cb->__return_value, result < 0 ? -1 : static_cast<ssize_t>(result), __ATOMIC_RELAXED);
  // seq_cst: releases the return value (and the buffer) to LoadError's acquire, and is the
  // completer's first half of the pair with a waiter (this store, then WakeWaiters' seq_cst add;
  // the waiter announces itself, then InProgress loads this seq_cst).
  __atomic_store_n(&cb->__error_code, result < 0 ? static_cast<int>(-result) : 0, __ATOMIC_SEQ_CST);
}

// A submission refused on the spot: the aiocb reports the error too (as glibc's does).
inline void MarkFailed(struct aiocb* cb, int error) {
  // relaxed, then the owner's release: as in MarkInProgress. The submitting thread learns the
  // refusal from its call's return value; another thread reads it through LoadOwner's acquire.
  __atomic_store_n(&cb->__return_value, -1, __ATOMIC_RELAXED);
  __atomic_store_n(&cb->__error_code, error, __ATOMIC_RELAXED);
  StoreTicket(cb, 0);
  __atomic_store_n(MetaWord(cb, 1), OwnerWord(), __ATOMIC_RELEASE);
}

}  // namespace kaio::posix

#endif  // KAIO_POSIX_AIOCB_WORDS_H_
