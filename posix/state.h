// posix/state.h: the POSIX layer's process-wide State, which runs POSIX requests on a kaio Service:
// submission (SubmitAiocb, Prepare, Launch), completion (OnDeliver), notification, the scans aio_fsync needs (posix/state.cc) and aio_cancel
// (posix/cancel.cc). Its start, its fate at fork() and at exit are posix/startup.h's; the C entry
// points (api/posix_aio.cc) call into it.
//
// Threading: one State per process (g_state), created on the first submission and never destroyed.
// Every public member may be called from any thread, concurrently; OnDeliver runs on whichever
// thread finished the request (one of kaio's, or a program's thread that submitted or reaped on
// its own). Each thread has its own producer token for the engine's queue (Token).
//
// Shape
//   - One process-wide State (a kaio Service with its own CompletionSink), created on the first
//     submission and never destroyed (requests may be in flight at exit; their buffers are the
//     program's). fork() children start their own on their first submission.
//   - A request is an engine slot and, in it, a Record (the slot's client record, which the engine
//     never touches): what the POSIX layer needs at completion (the aiocb, its sigevent, its
//     lio_listio group) and the atomics other threads may read at any time (fd, kind, state). The aiocb itself carries the results in
//     glibc's own fields (__error_code, __return_value) plus two words of kaio's in __glibc_reserved:
//     the ticket of its current slot (for aio_cancel) and an owner word (a magic number and the pid).
//   - Completion: the engine calls Sink::Deliver once per slot, on whichever thread finished it. It
//     publishes the result into the aiocb (return value, then the error code with a seq_cst store),
//     frees the slot, wakes aio_suspend / lio_listio(LIO_WAIT) waiters through one global futex,
//     then sends the sigevent (SIGEV_THREAD callbacks run on kaio's notification threads).
//   - aio_cancel races Deliver for a request the engine reports cancelled: whoever wins a CAS on the
//     record's state publishes ECANCELED; the slot is freed by whichever of the two finishes last.
//   - The orderer holds back writes to O_APPEND fds (one at a time per fd, in call order) and
//     aio_fsync (until every write queued before it on that fd completed), without blocking callers.
//   - Short kernel results: the engine finishes a short RWF_NOWAIT read or write in its pool
//     (Slot::partial), so a result is the whole answer, short only where a blocking call's is.
//
// Memory ordering: the engine's slot transitions order a submission before its Deliver. Results go
// to the aiocb with a seq_cst store of __error_code; readers (aio_error, aio_suspend) load it
// acquire/seq_cst, so the return value and the data written by a worker thread are visible after.
// Waiters and wakers meet on one futex word, g_completion_word (posix/waiting.cc).
//
// Relies on: runtime/engine.h, as a client of the engine: Claim, Describe, Enqueue, EnqueueDeferred
// and SubmitInline, Cancel, RegisterSink; the slot's client record (ClientRecordOf, slot_count),
// the result at delivery (TakeDelivered) and the slot's release (FreeDelivered). Nothing here
// reads or writes a slot's state, request or flags.
#ifndef KAIO_POSIX_STATE_H_
#define KAIO_POSIX_STATE_H_

#include <aio.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "core/slot.h"
#include "kaio/posix.h"
#include "kaio/posix_options.h"
#include "kaio/service.h"
#include "posix/notifier.h"
#include "posix/records.h"
#include "runtime/engine.h"

namespace kaio::posix {

class State;

// The process's State: null until the first submission, and again in a fork() child until its
// own first. Stored (release) under g_init_mu by posix/startup.cc; read with acquire loads.
extern std::atomic<State*> g_state;

// The outcome of cancelling one request.
enum class CancelOutcome { kCanceled, kNotCanceled, kAllDone, kRetry };

class Orderer;

// Who calls io_submit for a request (KAIO_INLINE_SUBMIT): the calling thread, while kaio's submitter
// sleeps, or the submitter. A thread that submits one request and then looks for results (aio_error,
// aio_return, aio_suspend) is bound by latency: submitting itself saves a thread hand-off (measured
// 1.5-1.6x the IOPS of O_DIRECT reads at iodepth 1, 4-7x for page-cache hits). A thread that submits
// a burst before it looks has work to overlap: the submitter takes the rest of the burst to
// io_submit in batches, on another CPU (submitting all of a 64-deep page-cache burst on the calling
// thread measured 0.6x of handing it over). Measured with fio, docs/posix.md.
enum class SubmitRoute {
  kSingle,   // aio_read/aio_write: inline if the thread looked at results since its last submission
  kList,     // a lio_listio entry of a list submitted inline: one flush after the last entry
  kHandOff,  // always through the submitter
};

// True for a thread's first submission and for one after it looked at results; the next
// submission before another look is part of a burst.
// initial-exec: aio_error is called in loops (fio asks each of its 64 requests on every pass), and
// the default model for a shared object costs a __tls_get_addr call per access.
inline thread_local bool t_looked_at_results __attribute__((tls_model("initial-exec"))) = true;
inline bool TakeLatencyBound() {
  const bool looked = t_looked_at_results;
  t_looked_at_results = false;
  return looked;
}
inline void NoteLookedAtResults() { t_looked_at_results = true; }

class State {
 public:
  State(std::unique_ptr<Service> service, const PosixOptions& options);
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  const PosixOptions& options() const { return options_; }
  runtime::Engine& engine() { return engine_; }

  // aio_read / aio_write / aio_fsync / a lio_listio entry. 0, or the errno of a refusal (the aiocb
  // then reports it as well). `route` says who calls io_submit (see SubmitRoute); with kList, a
  // request left for the caller's thread sets *flush, and the caller calls FlushInline() once after
  // the list's last entry. Otherwise the request is in the kernel, the pool or the submitter's hands
  // when this returns.
  int SubmitAiocb(struct aiocb* cb, Op op, LioGroup* group, SubmitRoute route = SubmitRoute::kSingle,
                  bool* flush = nullptr);
  // Submits what this thread queued for inline submission (see KAIO_INLINE_SUBMIT).
  void FlushInline() {
    if (runtime::Engine::ProducerToken* token = Token()) engine_.SubmitInline(*token);
  }

  // Claims a slot for `req`, has the engine describe it, and points the aiocb's ticket at it
  // (its generation in *generation). kNoSlot when max_requests are alive.
  uint32_t Prepare(const Request& req, uint32_t* generation = nullptr);
  // Hands a prepared slot to the engine.
  void Launch(uint32_t index);

  // The engine's Deliver.
  void OnDeliver(uint32_t index);

  // aio_cancel.
  int CancelAiocb(struct aiocb* cb);
  int CancelFd(int fd);

  // Publishes a result nobody else will deliver (cancelled or failed before reaching the engine).
  void Finish(struct aiocb* cb, int64_t result, const Notification& n, LioGroup* group);
  // relaxed: a statistic (Stats), through which nothing is published.
  void CountCancelled() { counters_.cancelled.fetch_add(1, std::memory_order_relaxed); }
  // Drops one count of a lio_listio group; the last one sends the list's notification.
  void ReleaseGroup(LioGroup* group);

  // Writes on fd in flight now, for aio_fsync.
  std::vector<Dep> ScanWrites(int fd) const;
  // True once the request named by dep holds its final result.
  bool Done(const Dep& dep) const;

  // This thread's token; nullptr once its TLS destructor ran (see ThreadToken).
  runtime::Engine::ProducerToken* Token();

  PosixStats Stats() const;

 private:
  class Sink final : public core::CompletionSink {
   public:
    explicit Sink(State& state) : state_(state) {}
    void Deliver(uint32_t index) override {
      // Counted before OnDeliver publishes the result: here `delivered` only tells SubmitNow
      // whether another request is still running (this engine is never shut down, so nothing waits
      // on the count for a result), and a program that sees the result and submits at once must
      // find this request finished, or its next request goes to the submitter instead of inline.
      // seq_cst: the completer's side of the engine's Shutdown handshake (engine.h: Complete loads
      // stopping_ after this add), kept though this engine is never shut down. SubmitNow needs only
      // that the add comes before Publish's release, which the program's acquire pairs with.
      delivered.fetch_add(1, std::memory_order_seq_cst);
      state_.OnDeliver(index);
    }

   private:
    State& state_;
  };

  int SubmitNow(const Request& req, SubmitRoute route, bool* flush);
  CancelOutcome CancelRequest(uint32_t index, uint32_t generation, struct aiocb* cb);
  // Until the request of that generation holds its final result (a completer or canceller is
  // publishing it: a few hundred instructions at most).
  void WaitSettled(Record rec, uint32_t generation) const;
  void ClaimNotifyThread(Notification* n, int64_t* result);
  void AfterCompletion(const Notification& n, LioGroup* group);
  void Notify(const Notification& n);
  void SendSignal(const Notification& n);

  const PosixOptions options_;
  std::unique_ptr<Service> service_;
  runtime::Engine& engine_;
  const pid_t pid_;
  const uid_t uid_;
  Sink sink_;
  Notifier notifier_;
  std::unique_ptr<Orderer> orderer_;
  // For threads whose own token is gone (ThreadToken::retired): rare, so one token under a mutex.
  std::mutex retired_mu_;
  std::unique_ptr<runtime::Engine::ProducerToken> retired_token_;

  struct alignas(64) Counters {
    std::atomic<uint64_t> submitted{0}, ordered{0}, cancelled{0}, signals{0}, threads{0};
  } counters_;
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_STATE_H_
