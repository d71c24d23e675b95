// ParseCommandLine: absl::ParseCommandLine as kaio's command-line tools (kaio_bench, kaio_stress,
// tpc_copy, the fuzz driver) use it, keeping the command lines those tools have always accepted:
//   - `usage` is the program's usage message: --help prints it, then every flag the program defines
//     (Abseil's own flags are left to --helpfull);
//   - -h is --help, and a flag's name may be written with '-' for '_' (--json-file is --json_file);
//   - the exit statuses stay the tools' own: 0 after --help, 2 for a flag that does not exist or a value
//     that does not parse (absl::ParseCommandLine would exit 1 in both cases), after absl's "ERROR:" line.
// Call it once, first thing in main(), before any other thread exists. Returns the positional arguments
// (argv[0] not included).
#ifndef KAIO_TOOLS_CLI_H_
#define KAIO_TOOLS_CLI_H_

#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kaio_tools {

std::vector<std::string> ParseCommandLine(int argc, char** argv, absl::string_view usage);

// True if ParseCommandLine saw the flag named `name` on the command line (absl 20220623 keeps its own
// record private). Not for a flag set by --flagfile or --fromenv.
bool GivenOnCommandLine(absl::string_view name);

// True if `flag` was given on the command line: for flags whose default means "decide for me", and for
// two names of one option.
template <typename T>
bool Given(const absl::Flag<T>& flag) {
  return GivenOnCommandLine(absl::GetFlagReflectionHandle(flag).Name());
}

// OK if low <= the flag's value <= high, else INVALID_ARGUMENT naming the flag and the range
// ("--threads=0: expected an integer in [1, 256]").
template <typename T>
absl::Status InRange(const absl::Flag<T>& flag, T low, T high) {
  const T value = absl::GetFlag(flag);
  if (value >= low && value <= high) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", absl::GetFlagReflectionHandle(flag).Name(), "=", value,
                                                 ": expected an integer in [", low, ", ", high, "]"));
}

}  // namespace kaio_tools

#endif  // KAIO_TOOLS_CLI_H_
