#include "tools/cli.h"

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <set>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"

namespace kaio_tools {
namespace {

// Written by ParseCommandLine on the only thread there is yet, read after it.
bool g_parsing = false;                    // set around absl::ParseCommandLine
bool g_help = false;                       // the command line asks for --help (or another usage flag)
std::set<std::string>* g_given = nullptr;  // names of the flags on the command line

// absl::ParseCommandLine ends the process with exit(1) after printing --help and after reporting a flag it
// cannot parse. This atexit handler, registered before it runs, gives those exits the tools' statuses.
void ExitStatusOfParse() {
  if (!g_parsing) return;
  std::cout.flush();
  std::fflush(nullptr);
  std::_Exit(g_help ? 0 : 2);
}

// True for absl's usage flags (absl/flags/parse.cc handles them itself): --help, --helpfull, --help=x...
bool IsUsageFlag(absl::string_view arg) {
  if (!absl::ConsumePrefix(&arg, "-")) return false;
  absl::ConsumePrefix(&arg, "-");
  absl::string_view name = arg.substr(0, arg.find('='));
  for (const char* usage : {"help", "helpfull", "helpshort", "helppackage", "helpon", "helpmatch", "version",
                            "only_check_args"}) {
    if (name == usage) return true;
  }
  return false;
}

// "-h" -> "--help"; "--json-file=x" -> "--json_file=x". What follows '=' is left alone (so are the arguments
// after "--", by the caller).
std::string Normalize(std::string arg) {
  if (arg == "-h") return "--help";
  if (arg.size() < 2 || arg[0] != '-') return arg;
  size_t start = arg[1] == '-' ? 2 : 1;
  if (start >= arg.size() || !absl::ascii_isalpha(static_cast<unsigned char>(arg[start]))) return arg;
  size_t end = arg.find('=', start);
  if (end == std::string::npos) end = arg.size();
  for (size_t i = start; i < end; ++i) {
    if (arg[i] == '-') arg[i] = '_';
  }
  return arg;
}

// The flags named in `args` (normalized, argv[0] first), once absl has accepted them all: "--name=v",
// "--name v" (a flag that is not a bool takes the next argument), "--name" and "--noname" (a bool).
std::set<std::string> FlagsNamed(const std::vector<std::string>& args) {
  std::set<std::string> names;
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i) {
    absl::string_view arg = args[i];
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    const bool has_value = arg.find('=') != absl::string_view::npos;
    absl::string_view name = arg.substr(0, arg.find('='));
    const absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::ConsumePrefix(&name, "no")) flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr) continue;
    names.insert(std::string(flag->Name()));
    if (!has_value && !flag->IsOfType<bool>()) ++i;
  }
  return names;
}

}  // namespace

bool GivenOnCommandLine(absl::string_view name) {
  return g_given != nullptr && g_given->count(std::string(name)) != 0;
}

std::vector<std::string> ParseCommandLine(int argc, char** argv, absl::string_view usage) {
  absl::SetProgramUsageMessage(usage);
  absl::FlagsUsageConfig config;
  auto ours = [](absl::string_view filename) { return !absl::StrContains(filename, "absl/"); };
  config.contains_help_flags = ours;
  config.contains_helpshort_flags = ours;
  config.contains_helppackage_flags = ours;
  absl::SetFlagsUsageConfig(config);

  std::vector<std::string> args;
  bool flags_end = false;
  for (int i = 0; i < argc; ++i) {
    args.push_back(i == 0 || flags_end ? std::string(argv[i]) : Normalize(argv[i]));
    flags_end = flags_end || args.back() == "--";
    g_help = g_help || (i > 0 && !flags_end && IsUsageFlag(args.back()));
  }
  std::vector<char*> pointers;
  for (std::string& a : args) pointers.push_back(a.data());
  pointers.push_back(nullptr);

  std::atexit(ExitStatusOfParse);
  g_parsing = true;
  std::vector<char*> rest = absl::ParseCommandLine(argc, pointers.data());
  g_parsing = false;
  g_given = new std::set<std::string>(FlagsNamed(args));
  return std::vector<std::string>(rest.begin() + 1, rest.end());
}

}  // namespace kaio_tools
