// posix/notifier.cc: sigevents and the SIGEV_THREAD threads (see notifier.h).
#include "posix/notifier.h"

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <system_error>
#include <thread>

#include "posix/waiting.h"

namespace kaio::posix {

bool ParseSigevent(const struct sigevent& sev, Notification* n) {
  n->notify = sev.sigev_notify;
  n->signo = sev.sigev_signo;
  n->value = sev.sigev_value;
  switch (sev.sigev_notify) {
    case SIGEV_NONE:
      return true;
    case SIGEV_SIGNAL:
      // Signal 0 asks for none; a number no signal has is accepted and sends nothing, as glibc's
      // sigqueue fails quietly (its aio_read returns 0): a program cannot tell them apart there.
      if (sev.sigev_signo <= 0 || sev.sigev_signo >= NSIG) {
        n->notify = SIGEV_NONE;
        n->signal_fails = sev.sigev_signo != 0;
      }
      return true;
    case SIGEV_THREAD_ID:
      n->tid = sev._sigev_un._tid;
      return sev.sigev_signo > 0 && sev.sigev_signo < NSIG && n->tid > 0;
    case SIGEV_THREAD:
      // Refused without a function: glibc would start a thread that calls a null pointer.
      n->function = sev.sigev_notify_function;
      n->attributes = sev.sigev_notify_attributes;
      return n->function != nullptr;
    default:
      // glibc accepts any other value and notifies nothing; so does kaio.
      n->notify = SIGEV_NONE;
      return true;
  }
}

void RunCallback(void (*function)(union sigval), union sigval value) {
  sigset_t none, kept;
  sigemptyset(&none);
  pthread_sigmask(SIG_SETMASK, &none, &kept);
  function(value);
  pthread_sigmask(SIG_SETMASK, &kept, nullptr);
}

bool Notifier::Reserve(Notification* n) {
  if (n->attributes != nullptr && (n->dedicated = SpawnWithAttributes(n->attributes)) != nullptr) return true;
  std::lock_guard<std::mutex> lock(mu_);
  if (available_ > owed_) {
    ++owed_;
    return true;
  }
  if (!StartWorkerLocked()) return false;
  ++owed_;
  return true;
}

void Notifier::Post(const Notification& n) {
  if (DedicatedThread* d = n.dedicated) {
    std::lock_guard<std::mutex> lock(d->mu);
    d->function = n.function;
    d->value = n.value;
    d->posted = true;
    d->cv.notify_one();
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  jobs_.push_back(Job{n.function, n.value});
  cv_.notify_one();
}

void Notifier::ReportNoThread(const char* why) {
  static std::atomic<bool> reported{false};
  // relaxed: only decides who prints the one message.
  if (!reported.exchange(true, std::memory_order_relaxed)) {
    std::fprintf(stderr,
                 "kaio: cannot start a SIGEV_THREAD notification thread (%s); such requests report "
                 "EAGAIN while no thread can be started\n",
                 why);
  }
}

void* Notifier::RunDedicated(void* arg) {
  auto* d = static_cast<DedicatedThread*>(arg);
  void (*function)(union sigval);
  union sigval value;
  {
    std::unique_lock<std::mutex> lock(d->mu);
    d->cv.wait(lock, [d] { return d->posted; });
    function = d->function;
    value = d->value;
  }
  delete d;
  RunCallback(function, value);
  return nullptr;
}

DedicatedThread* Notifier::SpawnWithAttributes(pthread_attr_t* attributes) {
  auto* d = new DedicatedThread;
  pthread_t thread;
  int rc;
  {
    BlockAsyncSignals block;  // while it waits for its callback
    rc = pthread_create(&thread, attributes, RunDedicated, d);
  }
  if (rc != 0) {
    delete d;
    return nullptr;
  }
  int detach = PTHREAD_CREATE_DETACHED;
  if (pthread_attr_getdetachstate(attributes, &detach) == 0 && detach == PTHREAD_CREATE_JOINABLE) {
    pthread_detach(thread);  // nobody would join it
  }
  return d;
}

bool Notifier::StartWorkerLocked() {
  BlockAsyncSignals block;
  try {
    std::thread([this] { Worker(); }).detach();
  } catch (const std::system_error& e) {
    ReportNoThread(e.what());
    return false;
  }
  ++available_;
  return true;
}

void Notifier::Worker() {
  pthread_setname_np(pthread_self(), "kaio-notify");
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (jobs_.empty()) {
      bool woke = cv_.wait_for(lock, std::chrono::seconds(30), [this] { return !jobs_.empty(); });
      if (!woke && available_ > owed_) {  // idle, and no claim counts on this thread
        --available_;
        return;
      }
      continue;
    }
    Job job = jobs_.front();
    jobs_.pop_front();
    --owed_;
    --available_;
    lock.unlock();
    RunCallback(job.function, job.value);
    lock.lock();
    ++available_;
  }
}

}  // namespace kaio::posix
