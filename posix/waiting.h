// posix/waiting.h: how the POSIX layer waits for completions. aio_suspend, lio_listio(LIO_WAIT)
// and the orderer's thread sleep on one process-wide futex word that every completion bumps
// (WakeWaiters). Also the signal mask kaio's own threads start with (BlockAsyncSignals).
//
// Threading: any thread. PrepareToWait and SleepOnSequence take no lock and allocate nothing, so
// aio_suspend stays async-signal-safe. WakeWaiters is called once per completion, by whichever
// thread published it, and makes a system call only when someone sleeps.
//
// Memory ordering: every access to the word is seq_cst. A waiter announces itself (PrepareToWait),
// then checks its condition (for an aiocb, InProgress's seq_cst load of __error_code), then sleeps
// only while the word is unchanged; a completer publishes (Publish's seq_cst store), then bumps the
// word. So either the waiter's check sees the result, or its sleep sees a changed word, or the
// completer sees the sleepers bit and wakes it. waiting.cc has the word's layout.
//
// Relies on: Linux's private futex; posix/aiocb_words.h (WaitAllListed reads the aiocbs).
#ifndef KAIO_POSIX_WAITING_H_
#define KAIO_POSIX_WAITING_H_

#include <aio.h>
#include <pthread.h>
#include <signal.h>
#include <time.h>

#include <cstdint>
#include <initializer_list>

#include "core/clock.h"

namespace kaio::posix {

// futex(2) on `address`: the system call's answer (-1 with errno when it fails).
long Futex(uint32_t* address, int op, uint32_t value, const struct timespec* timeout);

// After a result is published: wakes everyone sleeping on the completion word, if anyone is.
void WakeWaiters();

// Announces a sleeper; returns the word to sleep on. Check the condition after this.
uint32_t PrepareToWait();

// Sleeps while the word equals `word` (from PrepareToWait), until woken, the timeout (relative, may
// be null) passes, or a signal handler runs. Returns 0, or ETIMEDOUT / EINTR.
int SleepOnSequence(uint32_t word, const struct timespec* timeout);

// CLOCK_MONOTONIC, in nanoseconds (kaio's one clock).
using core::MonotonicNs;

// Waits until no listed, non-NOP request is in progress. 0, or EINTR.
int WaitAllListed(struct aiocb* const list[], int nent);

// Blocks every asynchronous signal for its scope, so threads started meanwhile inherit a full mask
// and process-directed signals (SIGEV_SIGNAL completions among them) go to the program's threads.
// Synchronous ones stay open: a crash in a kaio thread must still reach its handler.
class BlockAsyncSignals {
 public:
  BlockAsyncSignals() {
    sigset_t all;
    sigfillset(&all);
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&all, sig);
    pthread_sigmask(SIG_BLOCK, &all, &old_);
  }
  ~BlockAsyncSignals() { pthread_sigmask(SIG_SETMASK, &old_, nullptr); }
  BlockAsyncSignals(const BlockAsyncSignals&) = delete;
  BlockAsyncSignals& operator=(const BlockAsyncSignals&) = delete;

 private:
  sigset_t old_;
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_WAITING_H_
