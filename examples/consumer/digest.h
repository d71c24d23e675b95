// digest.h: a tiny library on kaio's public API: the FNV-1a (64-bit) digest of a file, read through a
// kaio::Requester with a window of reads in flight.
#ifndef KAIO_CONSUMER_DIGEST_H_
#define KAIO_CONSUMER_DIGEST_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "kaio/requester.h"

namespace consumer {

inline constexpr uint64_t kFnvOffsetBasis = 14695981039346656037ull;

// Folds `size` bytes into an FNV-1a state (start from kFnvOffsetBasis).
uint64_t Fnv1a(uint64_t state, const void* data, size_t size);

struct DigestOptions {
  size_t block_size = 64 << 10;  // bytes per read
  int window = 8;                // reads in flight
};

// The digest of the whole regular file open on `fd`. Uses requester.Wait (it blocks: this is the
// plain-thread style; see kaio's examples/tpc_copy.cc for the event-loop style). Errors: the
// errno of a failed read as a status (e.g. EBADF, EISDIR), INVALID_ARGUMENT for bad options, and
// kaio's own status if it refuses a request. Returns only once every read it issued has completed.
absl::StatusOr<uint64_t> DigestFile(kaio::Requester& requester, int fd, const DigestOptions& options = {});

}  // namespace consumer

#endif  // KAIO_CONSUMER_DIGEST_H_
