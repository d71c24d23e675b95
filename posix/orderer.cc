// posix/orderer.cc: the Orderer's lanes and its thread (see orderer.h).
#include "posix/orderer.h"

#include <errno.h>
#include <pthread.h>

#include <cstdio>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "posix/aiocb_words.h"
#include "posix/state.h"
#include "posix/waiting.h"

namespace kaio::posix {

int Orderer::Submit(const Request& req) {
  std::vector<uint32_t> launch;
  std::vector<Request> failed;
  int error = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Dep> deps;
    if (IsSync(req.op)) deps = state_.ScanWrites(req.fd);
    StoreTicket(req.cb, kTicketPending);
    Lane& lane = lanes_[req.fd];
    lane.pending.push_back(Entry{req, std::move(deps)});
    ++pending_;
    ReleaseReady(lane, &launch, &failed);
    if (pending_ > 0 && !StartThreadLocked()) {
      // Without the thread nothing is ever held, so the one entry still held is this request.
      lane.pending.pop_back();
      --pending_;
      error = EAGAIN;
    } else if (pending_ > 0) {
      cv_.notify_one();
    }
  }
  Finish(launch, failed);
  return error;
}

bool Orderer::CancelPending(struct aiocb* cb) {
  std::vector<uint32_t> launch;
  std::vector<Request> failed, cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = lanes_.find(cb->aio_fildes);
    if (it == lanes_.end()) return false;
    std::deque<Entry>& pending = it->second.pending;
    for (auto e = pending.begin(); e != pending.end(); ++e) {
      if (e->req.cb == cb) {
        cancelled.push_back(e->req);
        pending.erase(e);
        --pending_;
        break;
      }
    }
    if (cancelled.empty()) return false;
    ReleaseReady(it->second, &launch, &failed);
  }
  FinishCancelled(cancelled);
  Finish(launch, failed);
  return true;
}

size_t Orderer::CancelFd(int fd) {
  std::vector<uint32_t> launch;
  std::vector<Request> failed, cancelled;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = lanes_.find(fd);
    if (it == lanes_.end()) return 0;
    for (Entry& e : it->second.pending) cancelled.push_back(e.req);
    pending_ -= it->second.pending.size();
    it->second.pending.clear();
  }
  FinishCancelled(cancelled);
  return cancelled.size();
}

void Orderer::ReleaseReady(Lane& lane, std::vector<uint32_t>* launch, std::vector<Request>* failed) {
  while (!lane.pending.empty()) {
    Entry& head = lane.pending.front();
    if (lane.has_last && !state_.Done(lane.last)) return;
    for (const Dep& dep : head.deps) {
      if (!state_.Done(dep)) return;
    }
    uint32_t generation = 0;
    uint32_t index = state_.Prepare(head.req, &generation);
    if (index == kNoSlot) {
      failed->push_back(head.req);
    } else {
      launch->push_back(index);
      lane.last = Dep{index, generation};
      lane.has_last = true;
    }
    lane.pending.pop_front();
    --pending_;
  }
}

void Orderer::Finish(const std::vector<uint32_t>& launch, const std::vector<Request>& failed) {
  for (uint32_t index : launch) state_.Launch(index);
  for (const Request& req : failed) state_.Finish(req.cb, -EAGAIN, req.notification, req.group);
}

void Orderer::FinishCancelled(const std::vector<Request>& cancelled) {
  for (const Request& req : cancelled) {
    state_.CountCancelled();
    state_.Finish(req.cb, -ECANCELED, req.notification, req.group);
  }
}

bool Orderer::StartThreadLocked() {
  if (thread_started_) return true;
  BlockAsyncSignals block;
  try {
    std::thread([this] { Loop(); }).detach();
  } catch (const std::system_error& e) {
    std::fprintf(stderr, "kaio: cannot start the kaio-order thread (%s); the request gets EAGAIN\n", e.what());
    return false;
  }
  thread_started_ = true;
  return true;
}

void Orderer::Loop() {
  pthread_setname_np(pthread_self(), "kaio-order");
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    if (pending_ == 0) {
      cv_.wait(lock);
      continue;
    }
    uint32_t seq = PrepareToWait();
    std::vector<uint32_t> launch;
    std::vector<Request> failed;
    for (auto it = lanes_.begin(); it != lanes_.end();) {
      Lane& lane = it->second;
      if (!lane.pending.empty()) ReleaseReady(lane, &launch, &failed);
      if (lane.pending.empty() && (!lane.has_last || state_.Done(lane.last))) {
        it = lanes_.erase(it);
      } else {
        ++it;
      }
    }
    bool sleep = pending_ > 0 && launch.empty() && failed.empty();
    lock.unlock();
    Finish(launch, failed);
    if (sleep) SleepOnSequence(seq, nullptr);
    lock.lock();
  }
}

}  // namespace kaio::posix
