// Helpers the engine's files share (runtime/engine.cc and the files of its hops). Internal to
// runtime/: nothing outside includes it.
#ifndef KAIO_RUNTIME_ENGINE_INTERNAL_H_
#define KAIO_RUNTIME_ENGINE_INTERNAL_H_

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <time.h>

#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "core/clock.h"
#include "core/io_request.h"
#include "core/slot.h"

namespace kaio::runtime {
using core::SlotState;
using core::WordGeneration;
using core::WordState;

constexpr uint32_t kNoSlot = core::SlotTable::kNoSlot;

using core::MonotonicNs;

// kaio's wake-up and completion eventfds: non-blocking, as every wait on them is a bounded poll.
inline int MakeEventfd() { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

// Reads the whole text of a small /proc file, or "?" when it cannot.
inline std::string ReadProcValue(const char* path) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return "?";
  char buf[64] = {0};
  size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = '\0';
  return buf;
}

// A read or write that finds nothing else of its fd in flight skips the look at the fd (statx:
// 0.5 us here, where a 4 KiB page-cache pread is 0.7 us: page-cache reads at iodepth 1 measured
// 0.7x with the look), and MoveToLane takes it to its lane if the kernel says it would block.
// Off, every read and write on an fd with nothing of it in flight is looked at.
constexpr bool kLoneRequestsSkipTheLook = true;

using core::IsReadOrWrite;
using core::IsVectored;
using core::IsWrite;

// A refused write on its way to the pool, past MoveToLane (so no stream or O_APPEND file): if its
// fd is buffered (`file_flags`, its F_GETFL, without O_DIRECT), the pool runs it in the fd's lane,
// one at a time with the fd's others (see PoolQueue).
inline void MarkBufferedFileWrite(core::Slot& slot, int file_flags) {
  if (IsWrite(slot.io.op) && file_flags >= 0 && !(file_flags & O_DIRECT)) {
    slot.flags |= core::kSlotFileWrite;
  }
}

inline absl::Status NameAndPin(std::thread& thread, const std::string& name, int cpu) {
  std::string short_name = name.substr(0, 15);  // the kernel keeps 15 characters
  pthread_setname_np(thread.native_handle(), short_name.c_str());
  if (cpu < 0) return absl::OkStatus();
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(thread.native_handle(), sizeof(set), &set);
  if (rc != 0) return absl::ErrnoToStatus(rc, absl::StrCat("kaio: pinning thread ", name, " to CPU ", cpu));
  return absl::OkStatus();
}

}  // namespace kaio::runtime

#endif  // KAIO_RUNTIME_ENGINE_INTERNAL_H_
