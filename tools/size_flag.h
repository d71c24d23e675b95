// Size: a byte count as a command-line flag, written the way fio writes sizes: "4096", "4k", "64k",
// "1m", "1g", "1t" (binary units, any case; "4kb" and "1gib" are read too). Every tool that takes a
// size (kaio_bench --bs/--size, tpc_copy --chunk, the fuzz driver's --max_len) takes this type, so they
// all read the same spellings and report a bad one the same way:
//   ABSL_FLAG(kaio_tools::Size, bs, kaio_tools::Size(4096), "block size");
//   uint64_t bs = absl::GetFlag(FLAGS_bs).bytes;
#ifndef KAIO_TOOLS_SIZE_FLAG_H_
#define KAIO_TOOLS_SIZE_FLAG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kaio_tools {

struct Size {
  constexpr Size() = default;
  constexpr explicit Size(uint64_t b) : bytes(b) {}
  uint64_t bytes = 0;
};

// "4k" -> 4096, "1g" -> 2^30. INVALID_ARGUMENT, with examples, for anything else or a value past 2^64.
absl::StatusOr<uint64_t> ParseSize(absl::string_view text);
// 4096 -> "4k", 3 << 30 -> "3g", 1000 -> "1000": the largest unit that divides the value exactly.
std::string FormatSize(uint64_t bytes);

// The absl flags hooks (found by argument-dependent lookup).
bool AbslParseFlag(absl::string_view text, Size* size, std::string* error);
std::string AbslUnparseFlag(Size size);

}  // namespace kaio_tools

#endif  // KAIO_TOOLS_SIZE_FLAG_H_
