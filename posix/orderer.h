// posix/orderer.h: the Orderer, which holds back the requests that must wait for earlier writes on
// the same fd: writes to an O_APPEND fd (one at a time, in call order) and aio_fsync (until every
// write in flight on the fd when it was called has completed), without blocking the caller.
//
// Threading: Submit, CancelPending and CancelFd may be called from any thread. One mutex guards the
// lanes; prepared slots are launched (launching may deliver, and delivering may notify) only after
// it is released. A held request is released by whichever caller finds it free to go, otherwise by
// the orderer's own thread (kaio-order), started by the first request that has to wait.
//
// Memory ordering: the lanes are under the mutex. Whether an earlier request is done is read from
// its record (State::Done, an acquire load of the record's state). The kaio-order thread announces
// itself on the completion futex (posix/waiting.h) before it checks, so a completion after the
// check wakes it.
//
// Relies on: posix/state.h (State::Prepare, Launch, Finish, ScanWrites, Done), posix/records.h,
// posix/aiocb_words.h (a held request's ticket word says kTicketPending).
#ifndef KAIO_POSIX_ORDERER_H_
#define KAIO_POSIX_ORDERER_H_

#include <aio.h>
#include <stddef.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "posix/records.h"

namespace kaio::posix {

class State;

// Holds back requests that must wait for earlier writes on the same fd: writes to O_APPEND fds
// (released one at a time, in call order) and aio_fsync (released once the writes in flight when it
// was called have completed, and after everything held back before it on that fd). Submit releases
// at once what may go; the rest is released by the orderer's thread, which sleeps on the completion
// futex while anything is held.
class Orderer {
 public:
  explicit Orderer(State& state) : state_(state) {}
  Orderer(const Orderer&) = delete;
  Orderer& operator=(const Orderer&) = delete;

  // 0, or EAGAIN when the request would have to wait and the orderer's thread cannot be started
  // (it is then not held: nobody would release it).
  int Submit(const Request& req);

  // Cancels `cb` if it is still held back. False if it is not (released meanwhile, or never held).
  bool CancelPending(struct aiocb* cb);

  // Cancels everything held back on fd; returns how many.
  size_t CancelFd(int fd);

 private:
  struct Entry {
    Request req;
    std::vector<Dep> deps;
  };
  struct Lane {
    std::deque<Entry> pending;
    Dep last{0, 0};  // the last request released from this lane
    bool has_last = false;
  };

  // Under mu_: releases the lane's head while it may go. Prepared slots are launched, and refusals
  // finished, by the caller after unlocking (launching may deliver, and delivering may notify).
  void ReleaseReady(Lane& lane, std::vector<uint32_t>* launch, std::vector<Request>* failed);

  void Finish(const std::vector<uint32_t>& launch, const std::vector<Request>& failed);

  void FinishCancelled(const std::vector<Request>& cancelled);

  // False if the thread is not running and cannot be started now (a later Submit tries again).
  bool StartThreadLocked();

  void Loop();

  State& state_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Lane> lanes_;
  size_t pending_ = 0;
  bool thread_started_ = false;
};

}  // namespace kaio::posix

#endif  // KAIO_POSIX_ORDERER_H_
