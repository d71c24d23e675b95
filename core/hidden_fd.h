// HiddenFd: one of kaio's own descriptors (an eventfd, an epoll set), kept usable when the program
// closes its number or puts another file on it.
//
// glibc's AIO holds no descriptor, so a program may close "every descriptor it does not know" (a
// daemon's close-all loop, closefrom(3)) with AIO in use, and go on with AIO. kaio keeps its numbers
// high (MoveOutOfTheWay) and, when one turns out lost, opens a new one in its place: Lost() says
// whether the number still names the file kaio opened (fstat: the same device and inode), and
// RepairIfLost() replaces it. The lost number is never closed by kaio: it is the program's now.
//
// What it cannot see: another descriptor of the same kind dup2'ed onto the number (every eventfd
// and epoll set shares one anonymous inode), and whatever kaio did with the number between the
// program's close and the check (a wake-up written to the program's new file there). Both need a
// program that reuses numbers at or above MoveOutOfTheWay's floor.
//
// Threading: get() from any thread; Lost() and RepairIfLost() from any thread, RepairIfLost()
// serialised by a mutex (it runs only after a failure or an idle timeout, never per request).
// A thread blocked on the old file (poll, epoll_wait) stays there until its timeout: every wait on
// a HiddenFd is bounded (kIdleLook), and after a repair the waiter finds the new number.
#ifndef KAIO_CORE_HIDDEN_FD_H_
#define KAIO_CORE_HIDDEN_FD_H_

#include <sys/types.h>

#include <atomic>
#include <mutex>

namespace kaio::core {

class HiddenFd {
 public:
  // How a replacement is made: returns a new descriptor, or -1 with errno.
  using Maker = int (*)();
  // Takes `fd` (already made by `make`, may be -1: not open yet).
  HiddenFd(int fd, Maker make);
  ~HiddenFd();  // closes the descriptor it holds (never a lost number)
  HiddenFd(const HiddenFd&) = delete;
  HiddenFd& operator=(const HiddenFd&) = delete;

  // Relaxed: the number publishes nothing (the kernel's fd table orders the file it names); a
  // thread that reads the old number after a repair finds it lost and asks again.
  int get() const { return fd_.load(std::memory_order_relaxed); }
  // True if get() no longer names the file this object opened.
  bool Lost();
  // If the number is still `seen` and lost, opens a replacement (moved out of the way). True if
  // get() is now another number than `seen` (replaced here or by another thread before).
  bool RepairIfLost(int seen);
  // Opens the descriptor if it is not open yet (-1). False if `make` fails.
  bool Open();

 private:
  static bool Identify(int fd, dev_t* dev, ino_t* ino);
  bool LostLocked() const;

  const Maker make_;
  std::atomic<int> fd_;
  std::mutex mu_;  // guards repairs and the identity below
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// core::DupOutOfTheWay, never on a number a HiddenFd believes it holds (a lost one the program
// closed): there kaio's own threads would read and write the duplicate as their eventfd.
int DupBesideHidden(int fd);

// How long a kaio thread waits on a HiddenFd before it looks whether the program took it.
inline constexpr int kIdleLookMs = 1000;

}  // namespace kaio::core

#endif  // KAIO_CORE_HIDDEN_FD_H_
