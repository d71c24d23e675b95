#include "tools/size_flag.h"

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace kaio_tools {

absl::StatusOr<uint64_t> ParseSize(absl::string_view text) {
  std::string t = absl::AsciiStrToLower(text);
  if (!t.empty() && t.back() == 'b') t.pop_back();  // "4kb", "1gib" tolerated
  if (t.size() >= 2 && t.back() == 'i') t.pop_back();
  int shift = 0;
  if (!t.empty()) {
    switch (t.back()) {
      case 'k': shift = 10; break;
      case 'm': shift = 20; break;
      case 'g': shift = 30; break;
      case 't': shift = 40; break;
      default: break;
    }
    if (shift != 0) t.pop_back();
  }
  uint64_t value = 0;
  if (t.empty() || !absl::SimpleAtoi(t, &value) || (shift != 0 && value > (~uint64_t{0} >> shift))) {
    return absl::InvalidArgumentError(absl::StrCat("not a size: '", text, "' (examples: 4096, 4k, 256m, 1g)"));
  }
  return value << shift;
}

std::string FormatSize(uint64_t bytes) {
  const char* units[] = {"", "k", "m", "g", "t"};
  int u = 0;
  while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrCat(bytes, units[u]);
}

bool AbslParseFlag(absl::string_view text, Size* size, std::string* error) {
  absl::StatusOr<uint64_t> bytes = ParseSize(text);
  if (!bytes.ok()) {
    *error = std::string(bytes.status().message());
    return false;
  }
  size->bytes = *bytes;
  return true;
}

std::string AbslUnparseFlag(Size size) { return FormatSize(size.bytes); }

}  // namespace kaio_tools
