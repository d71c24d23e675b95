#include "digest.h"

#include <sys/stat.h>

#include <cerrno>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kaio/types.h"

namespace consumer {

uint64_t Fnv1a(uint64_t state, const void* data, size_t size) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    state ^= p[i];
    state *= 1099511628211ull;
  }
  return state;
}

namespace {

struct Block {
  std::unique_ptr<char[]> buf;
  uint64_t index = 0;  // which block of the file
  size_t need = 0;
  size_t done = 0;
  bool busy = false;
};

}  // namespace

absl::StatusOr<uint64_t> DigestFile(kaio::Requester& requester, int fd, const DigestOptions& options) {
  if (options.block_size == 0 || options.window < 1) {
    return absl::InvalidArgumentError("DigestFile: block_size and window must be positive");
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return absl::ErrnoToStatus(errno, "DigestFile: fstat");
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  const uint64_t blocks = (size + options.block_size - 1) / options.block_size;

  std::vector<Block> window(static_cast<size_t>(options.window));
  for (Block& b : window) b.buf = std::make_unique<char[]>(options.block_size);
  uint64_t state = kFnvOffsetBasis;
  uint64_t next_to_issue = 0, next_to_fold = 0;
  int outstanding = 0;
  absl::Status error;

  auto issue = [&](size_t slot) {
    Block& b = window[slot];
    absl::StatusOr<kaio::Ticket> ticket =
        requester.Read(fd, b.buf.get() + b.done, b.need - b.done,
                       static_cast<int64_t>(b.index * options.block_size + b.done), /*tag=*/slot);
    if (!ticket.ok()) {
      error.Update(ticket.status());
      return;
    }
    b.busy = true;
    ++outstanding;
  };

  // Block i always lives in window slot i % window, so blocks are folded in file order.
  while (error.ok() && next_to_fold < blocks) {
    while (error.ok() && next_to_issue < blocks && next_to_issue < next_to_fold + window.size()) {
      size_t slot = static_cast<size_t>(next_to_issue % window.size());
      Block& b = window[slot];
      b.index = next_to_issue;
      b.need = static_cast<size_t>(std::min<uint64_t>(options.block_size, size - next_to_issue * options.block_size));
      b.done = 0;
      issue(slot);
      ++next_to_issue;
    }
    if (outstanding == 0) break;
    kaio::Completion done[16];
    size_t n = requester.Wait(absl::MakeSpan(done), 1);
    for (size_t i = 0; i < n; ++i) {
      --outstanding;
      Block& b = window[done[i].tag];
      b.busy = false;
      if (!done[i].ok()) {
        error.Update(absl::ErrnoToStatus(done[i].error(), "DigestFile: read"));
      } else if (done[i].result == 0) {
        error.Update(absl::OutOfRangeError("DigestFile: the file shrank while it was read"));
      } else {
        b.done += static_cast<size_t>(done[i].result);
        if (b.done < b.need && error.ok()) issue(done[i].tag);  // a short read: ask for the rest
      }
    }
    // Fold every block, in order, that is complete.
    while (error.ok() && next_to_fold < next_to_issue) {
      Block& b = window[next_to_fold % window.size()];
      if (b.busy || b.done < b.need) break;
      state = Fnv1a(state, b.buf.get(), b.need);
      ++next_to_fold;
    }
  }
  // The buffers are ours and the kernel may still be writing into them: collect every read before
  // they are freed, even on error.
  while (outstanding > 0) {
    kaio::Completion rest[16];
    outstanding -= static_cast<int>(requester.Wait(absl::MakeSpan(rest), 1));
  }
  if (!error.ok()) return error;
  return state;
}

}  // namespace consumer
