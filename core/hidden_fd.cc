#include "core/hidden_fd.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/syscalls.h"

namespace kaio::core {

HiddenFd::HiddenFd(int fd, Maker make) : make_(make), fd_(fd) {
  if (fd >= 0) Identify(fd, &dev_, &ino_);
}

HiddenFd::~HiddenFd() {
  const int fd = get();
  if (fd >= 0 && !LostLocked()) close(fd);  // the last user: no lock needed
}

bool HiddenFd::Identify(int fd, dev_t* dev, ino_t* ino) {
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  *dev = st.st_dev;
  *ino = st.st_ino;
  return true;
}

bool HiddenFd::Lost() {
  std::lock_guard<std::mutex> lock(mu_);
  return LostLocked();
}

bool HiddenFd::LostLocked() const {
  const int fd = get();
  if (fd < 0) return false;
  dev_t dev;
  ino_t ino;
  const int saved = errno;
  const bool same = Identify(fd, &dev, &ino) && dev == dev_ && ino == ino_;
  errno = saved;
  return !same;
}

bool HiddenFd::Open() {
  std::lock_guard<std::mutex> lock(mu_);
  if (get() >= 0) return true;
  const int fd = MoveOutOfTheWay(make_());
  if (fd < 0) return false;
  Identify(fd, &dev_, &ino_);
  fd_.store(fd, std::memory_order_relaxed);
  return true;
}

bool HiddenFd::RepairIfLost(int seen) {
  std::lock_guard<std::mutex> lock(mu_);
  if (get() != seen) return true;
  if (seen < 0 || !LostLocked()) return false;
  const int saved = errno;
  const int fd = MoveOutOfTheWay(make_());
  errno = saved;
  if (fd < 0) return false;  // no descriptor to be had: the next failure or timeout tries again
  Identify(fd, &dev_, &ino_);
  fd_.store(fd, std::memory_order_relaxed);
  return true;
}

}  // namespace kaio::core
