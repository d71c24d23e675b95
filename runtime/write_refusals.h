// WriteRefusals: a hint, per descriptor number, that the kernel refuses this fd's buffered
// RWF_NOWAIT writes, so the next ones go straight to the engine's blocking pool.
//
// Threading: any thread, without a lock. Memory ordering: none needed; every access is relaxed and
// the count may be lost or doubled under races: a wrong guess costs only speed, never correctness.
//
// Relies on: nothing (the engine consults it when a write is queued, and feeds it when the kernel
// refuses one: RouteKernelResult).
#ifndef KAIO_RUNTIME_WRITE_REFUSALS_H_
#define KAIO_RUNTIME_WRITE_REFUSALS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kaio::runtime {

// The engine first offers every read and write to the kernel with RWF_NOWAIT and sends refusals to
// its blocking pool. Some filesystems (ext4 among them) refuse every buffered write that way, so each
// one would pay an io_submit, a kernel event and a reaper hand-off before reaching the pool. kaio
// remembers, per descriptor number, that a buffered write was refused, and sends the next 255
// buffered writes on that number straight to the pool; then it offers one to the kernel again (the
// number may name another file by then). A wrong guess costs only speed, never correctness.
class WriteRefusals {
 public:
  // relaxed, every access: a hint that publishes nothing; a count lost or doubled by a race costs
  // only speed (see above).
  bool SkipKernel(int fd) {
    std::atomic<uint8_t>& left = left_[static_cast<unsigned>(fd) & (kSize - 1)];
    uint8_t n = left.load(std::memory_order_relaxed);
    if (n == 0) return false;
    left.store(static_cast<uint8_t>(n - 1), std::memory_order_relaxed);  // racy by design: a hint
    return true;
  }
  void Refused(int fd) { left_[static_cast<unsigned>(fd) & (kSize - 1)].store(255, std::memory_order_relaxed); }

 private:
  static constexpr size_t kSize = 4096;
  std::atomic<uint8_t> left_[kSize] = {};
};

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_WRITE_REFUSALS_H_
