// A main() for the fuzz target where libFuzzer is not linked (gcc builds, --config=tsan/asan/ubsan):
// runs LLVMFuzzerTestOneInput over the given corpus files and directories, then over random inputs.
//   api_fuzzer [--random=N] [--seed=S] [--max_len=L] [file or directory...]
// The seed is printed, so a failing random input can be replayed (--seed=S --random=N), and every input
// is written to $KAIO_FUZZ_LAST_INPUT (if set) before it runs, so a crash leaves its input behind.
#include <dirent.h>
#include <sys/stat.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

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

int main(int argc, char** argv) {
  long random_inputs = 0;
  unsigned long long seed = static_cast<unsigned long long>(std::chrono::steady_clock::now().time_since_epoch().count());
  size_t max_len = 512;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--random=", 0) == 0) {
      random_inputs = std::strtol(arg.c_str() + 9, nullptr, 10);
    } else if (arg.rfind("--seed=", 0) == 0) {
      seed = std::strtoull(arg.c_str() + 7, nullptr, 0);
    } else if (arg.rfind("--max_len=", 0) == 0) {
      max_len = std::strtoul(arg.c_str() + 10, nullptr, 10);
    } else {
      for (const std::string& f : Expand(arg)) files.push_back(f);
    }
  }
  std::printf("api_fuzzer (standalone): seed=%llu corpus_files=%zu random_inputs=%ld max_len=%zu\n", seed,
              files.size(), random_inputs, max_len);
  std::fflush(stdout);
  auto start = std::chrono::steady_clock::now();
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
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
  std::printf("api_fuzzer (standalone): PASS %zu corpus inputs and %ld random inputs in %lld ms\n", files.size(),
              random_inputs, static_cast<long long>(ms));
  return 0;
}
