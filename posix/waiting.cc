// posix/waiting.cc: the completion futex (see waiting.h).
#include "posix/waiting.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdint>

#include "posix/aiocb_words.h"

namespace kaio::posix {
namespace {

// One futex word for every waiter (aio_suspend, lio_listio(LIO_WAIT), the orderer):
//   g_completion_word = completions << 1 | sleepers bit.
// A waiter sets the sleepers bit, keeps the word's value v, checks its condition, and sleeps on the
// futex only while the word still equals v. A completer publishes, adds 2, and if the bit was set
// clears it and wakes everyone; completers that find the bit clear make no system call, so a burst
// of completions costs one FUTEX_WAKE per sleep. Every change of the word (an add or the clearing)
// makes a stale sleep fail, and everything is seq_cst: either the waiter's check sees the result,
// or its sleep sees a changed word, or the completer sees the bit and wakes it.
alignas(64) uint32_t g_completion_word = 0;

}  // namespace

long Futex(uint32_t* address, int op, uint32_t value, const struct timespec* timeout) {
  return syscall(SYS_futex, address, op, value, timeout, nullptr, 0);
}

void WakeWaiters() {
  // seq_cst, as every access to the word: the completer's half of the pair with PrepareToWait (the
  // result is published before this add; a waiter announces itself before it checks). Either the
  // announcement comes first in the word's order, and this add finds the sleepers bit (or a word
  // changed since, which fails the sleep), or it comes after: every write of the word being a
  // read-modify-write, it then reads from this add's release sequence, and the check sees what this
  // thread did before the add. That case needs only release and acquire, so a check that is only an
  // acquire (State::Done, of a kFinal set before this add) is covered too.
  uint32_t old = __atomic_fetch_add(&g_completion_word, 2, __ATOMIC_SEQ_CST);
  if (old & 1) {
    // seq_cst, as every access to the word. Cleared before the wake, so a waiter that re-arms after
    // it sets the bit again for the next completer; the change fails any sleep prepared before it.
    __atomic_fetch_and(&g_completion_word, ~uint32_t{1}, __ATOMIC_SEQ_CST);
    Futex(&g_completion_word, FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
  }
}

uint32_t PrepareToWait() {
  // seq_cst: the waiter's half of the pair with WakeWaiters. This load (when another waiter set the
  // bit already) or the CAS below is the announcement, before the caller checks its condition. The
  // CAS's failure order is seq_cst too: a failure that finds the bit set returns with that load as
  // the announcement.
  uint32_t word = __atomic_load_n(&g_completion_word, __ATOMIC_SEQ_CST);
  while ((word & 1) == 0) {
    if (__atomic_compare_exchange_n(&g_completion_word, &word, word | 1, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
      return word | 1;
    }
  }
  return word;
}

int SleepOnSequence(uint32_t word, const struct timespec* timeout) {
  long rc = Futex(&g_completion_word, FUTEX_WAIT_PRIVATE, word, timeout);
  if (rc == 0) return 0;
  if (errno == EINTR) return EINTR;
  if (errno == ETIMEDOUT) return ETIMEDOUT;
  return 0;  // EAGAIN: the word already changed
}

int WaitAllListed(struct aiocb* const list[], int nent) {
  while (true) {
    uint32_t seq = PrepareToWait();
    bool all_done = true;
    for (int i = 0; i < nent && all_done; ++i) {
      if (list[i] != nullptr && list[i]->aio_lio_opcode != LIO_NOP && InProgress(list[i])) all_done = false;
    }
    if (all_done) return 0;
    if (SleepOnSequence(seq, nullptr) == EINTR) return EINTR;
  }
}

}  // namespace kaio::posix
