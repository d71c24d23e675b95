// SubmitQueue: the hop between producers and the submitter: a moodycamel ConcurrentQueue of slot
// indices (one producer token per producer thread, so a producer never contends with another) and
// the submitter's sleep protocol, so that a producer makes a syscall only when the submitter sleeps.
//
// Threading: Push, Announce and WakeOnce may be called from any thread; the drains, TrySleep,
// EndSleep and WaitForWork belong to whoever holds the engine's submit role (DrainFrom: an inline
// caller's own token). Allocation: the queue allocates a block only as it grows (counted in
// QueueTraits::allocations); a steady state allocates nothing.
//
// Memory ordering: the sleep bit on work_seq_. A producer enqueues, then adds 2 (Announce: a
// seq_cst RMW) and wakes the submitter if the add saw bit 0 set; the submitter loads the sequence
// (Sequence: acquire) before its drain and, after an empty one, sets bit 0 by a CAS from that value
// (TrySleep, seq_cst). The CAS fails if any add came between (it drains again); an add after it
// sees the bit. Only the fetch_and that clears the bit writes the eventfd (WakeOnce), so a sleep
// costs one wake-up, not one per request enqueued while the submitter is on its way up. What a
// request carries is published by its slot's release into kQueued, before the enqueue.
#ifndef KAIO_RUNTIME_SUBMIT_QUEUE_H_
#define KAIO_RUNTIME_SUBMIT_QUEUE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include <concurrentqueue/concurrentqueue.h>

#include "absl/time/time.h"
#include "core/hidden_fd.h"
#include "core/syscalls.h"

namespace kaio::runtime {

// The queue's memory comes through here, so allocations are counted (ServiceStats::queue_block_allocations):
// a steady state allocates nothing, and a test can prove it.
struct QueueTraits : moodycamel::ConcurrentQueueDefaultTraits {
  static std::atomic<uint64_t> allocations;
  static void* malloc(size_t size) {
    // relaxed: a statistic (ServiceStats::queue_block_allocations), read without ordering.
    allocations.fetch_add(1, std::memory_order_relaxed);
    return std::malloc(size);
  }
  static void free(void* ptr) { std::free(ptr); }
};

class SubmitQueue {
 public:
  using ProducerToken = moodycamel::ProducerToken;
  using ConsumerToken = moodycamel::ConsumerToken;

  // `wake_efd`: the submitter's wake-up eventfd (taken over; replaced if the program takes it).
  SubmitQueue(core::Syscalls& sys, int wake_efd);
  SubmitQueue(const SubmitQueue&) = delete;
  SubmitQueue& operator=(const SubmitQueue&) = delete;

  // A token for one producer thread; allocates once.
  std::unique_ptr<ProducerToken> NewProducerToken() { return std::make_unique<ProducerToken>(queue_); }
  std::unique_ptr<ConsumerToken> NewConsumerToken() { return std::make_unique<ConsumerToken>(queue_); }

  // Producers. Push queues a slot index (already published in kQueued); false only when the
  // queue cannot allocate a block. Announce, after one or more pushes: true if the submitter sleeps
  // (the caller then wakes it with WakeOnce, at once or before it waits for the request).
  bool Push(ProducerToken& token, uint32_t index) { return queue_.enqueue(token, index); }
  bool Announce() {
    // seq_cst: after the enqueue, for the submitter's CAS in TrySleep (see the header comment).
    return (work_seq_.fetch_add(2, std::memory_order_seq_cst) & 1) != 0;
  }
  // Wakes the submitter if it sleeps; one caller per sleep writes the eventfd.
  void WakeOnce() {
    // seq_cst RMW: exactly one caller clears the bit, and it comes after that caller's Announce.
    if (work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst) & 1) Wake();
  }
  // Writes the eventfd whatever the bit says (shutdown).
  void Wake();

  // The submitter (the submit role's holder).
  // acquire: pairs with the producers' Announce, so a drain after it sees what they enqueued before.
  uint64_t Sequence() const { return work_seq_.load(std::memory_order_acquire); }
  size_t Drain(ConsumerToken& consumer, uint32_t* out, size_t max) {
    return queue_.try_dequeue_bulk(consumer, out, max);
  }
  // An inline caller's own requests only.
  size_t DrainFrom(ProducerToken& producer, uint32_t* out, size_t max) {
    return queue_.try_dequeue_bulk_from_producer(producer, out, max);
  }
  // False only if no producer's queue holds anything. Exact for the calling thread's own requests
  // (its pushes are its own stores; a stale view of drains only errs high); O(producers): for a rare
  // question only (SubmitInline out of room), never per request.
  bool MayHoldWork() const { return queue_.size_approx() != 0; }
  // Sets the sleep bit unless an Announce came since `seq` (then the caller drains again).
  bool TrySleep(uint64_t seq) {
    // seq_cst RMW: a producer's add comes before it (the CAS fails) or after (the add sees the bit).
    return work_seq_.compare_exchange_strong(seq, seq | 1, std::memory_order_seq_cst);
  }
  // After the sleep (or instead of it): if a producer cleared the bit first, it wrote the eventfd
  // (the next wait returns at once); if we clear it first, a producer that saw it set finds it
  // clear and writes nothing.
  void EndSleep() {
    // seq_cst RMW, as every access to work_seq_.
    work_seq_.fetch_and(~uint64_t{1}, std::memory_order_seq_cst);
  }
  // Waits for the eventfd until `deadline`, at most core::kIdleLookMs (a program that closes the
  // eventfd while we wait leaves us polling its old file: the bounded wait notices and replaces it).
  void WaitForWork(absl::Time deadline);

 private:
  core::Syscalls& sys_;
  core::HiddenFd wake_efd_;
  moodycamel::ConcurrentQueue<uint32_t, QueueTraits> queue_;
  // Producers add 2 after each enqueue; bit 0 is set while the submitter sleeps.
  alignas(64) std::atomic<uint64_t> work_seq_{0};
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_SUBMIT_QUEUE_H_
