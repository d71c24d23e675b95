// posix/notifier.h: a request's sigevent, read at submission (Notification, ParseSigevent), and the
// threads that run SIGEV_THREAD callbacks (Notifier). Sending a signal is State::SendSignal's
// (posix/state.cc), which needs the process's pid and uid and counts what it sends.
//
// Threading: ParseSigevent and RunCallback touch nothing shared. Notifier's Reserve and Post may be
// called from any thread, the engine's included (a completion claims a thread, publishes its result,
// then hands the callback over); one mutex guards its queue and counts, and no callback runs under
// it. Callbacks run on kaio-notify threads, or on a thread started with the request's
// sigev_notify_attributes (a DedicatedThread), never on the engine's threads.
//
// Memory ordering: Post hands a callback over under a mutex (Notifier's, or the DedicatedThread's),
// after the completion published its result; the thread that runs it takes it under the same
// mutex, so the callback sees its request's result and data.
//
// Relies on: posix/waiting.h (BlockAsyncSignals: the threads wait with asynchronous signals blocked).
#ifndef KAIO_POSIX_NOTIFIER_H_
#define KAIO_POSIX_NOTIFIER_H_

#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <mutex>

namespace kaio::posix {

struct DedicatedThread;

struct Notification {
  int notify = SIGEV_NONE;
  int signo = 0;
  union sigval value = {};
  void (*function)(union sigval) = nullptr;
  pthread_attr_t* attributes = nullptr;
  pid_t tid = 0;
  // SIGEV_SIGNAL with a number no signal has: glibc accepts the request, its sigqueue then fails,
  // and the request reports that failure (EINVAL) as its result. So does kaio.
  bool signal_fails = false;
  // Set by Notifier::Reserve on a completion's own copy: the thread with `attributes` started for
  // this callback.
  DedicatedThread* dedicated = nullptr;
};

// False for a sigevent kaio refuses (EINVAL): SIGEV_THREAD without a function, SIGEV_THREAD_ID
// (Linux's, which glibc's AIO ignores) without a signal and a thread. Everything else glibc accepts
// is accepted, notifying what glibc would: SIGEV_SIGNAL with signal 0 (what a zeroed aiocb holds,
// SIGEV_SIGNAL being 0 on Linux) and unknown sigev_notify values send nothing; a number no signal
// has fails the request with EINVAL once it has run (see Notification::signal_fails).
bool ParseSigevent(const struct sigevent& sev, Notification* n);

// Runs fn(value) as glibc runs a SIGEV_THREAD callback: with no signal blocked. kaio's threads
// otherwise block asynchronous signals (so that process-directed ones reach the program's threads
// while they wait); the mask is theirs again afterwards, whatever the callback did to it.
void RunCallback(void (*function)(union sigval), union sigval value);

// A thread started with a request's sigev_notify_attributes before its result was published; it
// waits for that one callback, runs it and ends.
struct DedicatedThread {
  std::mutex mu;
  std::condition_variable cv;
  bool posted = false;
  void (*function)(union sigval) = nullptr;
  union sigval value = {};
};

// Runs SIGEV_THREAD callbacks on kaio's notification threads (never on the engine's). A completion
// claims a thread for its callback (Reserve) before it publishes its result, and hands the callback
// over (Post) after: an unclaimed idle thread, or a new one, so a callback that blocks never holds
// up another. Idle threads leave after 30 s unless claimed. With sigev_notify_attributes, Reserve
// starts a thread with those attributes (if they are refused, a notification thread serves).
// When no thread can be started (RLIMIT_NPROC, address space), Reserve fails and the completion
// reports EAGAIN instead (see State::ClaimNotifyThread); every other request goes on.
class Notifier {
 public:
  Notifier() = default;
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Claims a thread for the callback of `n` (SIGEV_THREAD). False if none is free and none can be
  // started. Every true must be followed by one Post(n).
  bool Reserve(Notification* n);

  void Post(const Notification& n);

 private:
  struct Job {
    void (*function)(union sigval);
    union sigval value;
  };

  static void ReportNoThread(const char* why);
  static void* RunDedicated(void* arg);
  static DedicatedThread* SpawnWithAttributes(pthread_attr_t* attributes);

  // Under mu_.
  bool StartWorkerLocked();
  void Worker();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  size_t available_ = 0;  // notification threads not running a callback
  size_t owed_ = 0;       // callbacks claimed (Reserve) and not yet taken by a thread
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_NOTIFIER_H_
