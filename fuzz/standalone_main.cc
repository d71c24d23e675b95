// A main() for the fuzz target where libFuzzer is not linked (gcc builds, --config=tsan/asan/ubsan):
// runs LLVMFuzzerTestOneInput over the given corpus files and directories, then over random inputs.
//   api_fuzzer [--random=N] [--seed=S] [--max_len=L] [file or directory...]
// The flags are absl flags, which also take libFuzzer's single-dash spelling (-max_len=L); libFuzzer's
// other flags (-runs=N...) are refused by name, where they used to be taken for file names.
// The seed is printed, so a failing random input can be replayed (--seed=S --random=N), and every input
// is written to $KAIO_FUZZ_LAST_INPUT (if set) before it runs, so a crash leaves its input behind.
#include <dirent.h>
#include <sys/stat.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "tools/cli.h"
#include "tools/clock.h"
#include "tools/size_flag.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> Expand(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) {
    std::fprintf(stderr, "api_fuzzer: cannot open %s\n", path.c_str());
    std::exit(2);
  }
  if (!S_ISDIR(st.st_mode)) return {path};
  std::vector<std::string> files;
  if (DIR* dir = opendir(path.c_str())) {
    while (struct dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') files.push_back(path + "/" + e->d_name);
    }
    closedir(dir);
  }
  return files;
}

void RunOne(const std::vector<uint8_t>& input) {
  if (const char* last = std::getenv("KAIO_FUZZ_LAST_INPUT")) {
    std::ofstream(last, std::ios::binary).write(reinterpret_cast<const char*>(input.data()),
                                                static_cast<std::streamsize>(input.size()));
  }
  LLVMFuzzerTestOneInput(input.data(), input.size());
}

}  // namespace

ABSL_FLAG(int64_t, random, 0, "random inputs to run after the corpus");
ABSL_FLAG(uint64_t, seed, 0, "seed of the random inputs (default: from the clock; always printed)");
ABSL_FLAG(kaio_tools::Size, max_len, kaio_tools::Size(512), "longest random input, in bytes");

int main(int argc, char** argv) {
  std::vector<std::string> paths = kaio_tools::ParseCommandLine(
      argc, argv,
      "runs the fuzz target over corpus files and directories, then over random inputs.\n"
      "usage: api_fuzzer [--random=N] [--seed=S] [--max_len=L] [file or directory...]");
  const long random_inputs = static_cast<long>(absl::GetFlag(FLAGS_random));
  const unsigned long long seed = kaio_tools::Given(FLAGS_seed)
                                      ? absl::GetFlag(FLAGS_seed)
                                      : static_cast<unsigned long long>(kaio_tools::NowNs());
  const size_t max_len = absl::GetFlag(FLAGS_max_len).bytes;
  std::vector<std::string> files;
  for (const std::string& path : paths) {
    for (const std::string& f : Expand(path)) files.push_back(f);
  }
  std::printf("api_fuzzer (standalone): seed=%llu corpus_files=%zu random_inputs=%ld max_len=%zu\n", seed,
              files.size(), random_inputs, max_len);
  std::fflush(stdout);
  const int64_t start_ns = kaio_tools::NowNs();
  for (const std::string& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    RunOne(data);
  }
  uint64_t state = seed;
  auto next = [&state] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  for (long i = 0; i < random_inputs; ++i) {
    std::vector<uint8_t> data(next() % (max_len + 1));
    for (uint8_t& b : data) b = static_cast<uint8_t>(next());
    RunOne(data);
  }
  const long long ms = (kaio_tools::NowNs() - start_ns) / 1000000;
  std::printf("api_fuzzer (standalone): PASS %zu corpus inputs and %ld random inputs in %lld ms\n", files.size(),
              random_inputs, ms);
  return 0;
}
