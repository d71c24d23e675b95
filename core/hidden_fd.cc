#include "core/hidden_fd.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>

#include "core/syscalls.h"

namespace kaio::core {
namespace {

// Every number a HiddenFd of this process believes it holds. All eventfds and epoll sets share one
// anonymous inode, so fstat cannot tell kaio's own replacement on a lost number from the file that
// was there: a new descriptor must never land on a number another HiddenFd still believes in (the
// lanes' new epoll set on the engine's lost eventfd number would pass for the eventfd, and io_submit
// would say EINVAL for every request from then on).
std::mutex& RegistryMutex() {
  static std::mutex* mu = new std::mutex;  // never destroyed: used from late destructors
  return *mu;
}
std::set<int>& Registry() {
  static std::set<int>* numbers = new std::set<int>;
  return *numbers;
}

// Moves fd (ours, just made) off every number in the registry (with the registry's lock held).
int AvoidRegisteredLocked(int fd) {
  std::set<int>& registry = Registry();
  while (fd >= 0 && registry.count(fd)) {
    // The number is free (F_DUPFD gave it to us) but another HiddenFd believes in it: go higher.
    const int higher = fcntl(fd, F_DUPFD_CLOEXEC, fd + 1);
    if (higher < 0) break;  // EMFILE: keep it; that HiddenFd finds its file changed by other means
    close(fd);
    fd = higher;
  }
  return fd;
}

// Moves fd (ours, just made) out of the low numbers and off the registry; registers the result.
int PlaceAndRegister(int fd) {
  fd = MoveOutOfTheWay(fd);
  if (fd < 0) return fd;
  std::lock_guard<std::mutex> lock(RegistryMutex());
  fd = AvoidRegisteredLocked(fd);
  Registry().insert(fd);
  return fd;
}

void Unregister(int fd) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  Registry().erase(fd);
}

}  // namespace

int DupBesideHidden(int fd) {
  const int dup = DupOutOfTheWay(fd);
  if (dup < 0) return dup;
  std::lock_guard<std::mutex> lock(RegistryMutex());
  return AvoidRegisteredLocked(dup);
}

HiddenFd::HiddenFd(int fd, Maker make) : make_(make), fd_(PlaceAndRegister(fd)) {
  if (get() >= 0) Identify(get(), &dev_, &ino_);
}

HiddenFd::~HiddenFd() {
  const int fd = get();
  if (fd < 0) return;
  if (!LostLocked()) close(fd);  // the last user: no lock needed
  Unregister(fd);
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
  const int fd = PlaceAndRegister(make_());
  if (fd < 0) return false;
  Identify(fd, &dev_, &ino_);
  // relaxed: the number publishes nothing (see get()); dev_ and ino_ are guarded by mu_.
  fd_.store(fd, std::memory_order_relaxed);
  return true;
}

bool HiddenFd::RepairIfLost(int seen) {
  std::lock_guard<std::mutex> lock(mu_);
  if (get() != seen) return true;
  if (seen < 0 || !LostLocked()) return false;
  const int saved = errno;
  const int fd = PlaceAndRegister(make_());
  errno = saved;
  if (fd < 0) return false;  // no descriptor to be had: the next failure or timeout tries again
  Unregister(seen);  // the program's number now (after the new one is placed: it must avoid it)
  Identify(fd, &dev_, &ino_);
  // relaxed: the number publishes nothing (see get()); dev_ and ino_ are guarded by mu_.
  fd_.store(fd, std::memory_order_relaxed);
  return true;
}

}  // namespace kaio::core
