// What the fallback pool buys (issue 4): an O_DIRECT random-read load runs beside a buffered
// cold-cache random-read load, once with the fallback pool (buffered misses refused by RWF_NOWAIT
// and run on a blocking worker) and once without it (fallback_threads = 0: the submitter submits
// the buffered reads without RWF_NOWAIT and io_submit reads the disk inside the call). Prints the
// O_DIRECT load's latency percentiles and the longest single io_submit for each.
//
//   bazel run -c opt //bench:fallback_bench -- [seconds per run, default 5] [directory, default .]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kaio/requester.h"
#include "kaio/service.h"

namespace {

constexpr size_t kBlock = 4096;
constexpr int kDepth = 8;

int MakeFile(const std::string& path, size_t size, int flags) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0 || ftruncate(fd, 0) != 0) std::abort();
  std::vector<char> chunk(1 << 20, 'k');
  for (size_t done = 0; done < size; done += chunk.size()) {
    if (pwrite(fd, chunk.data(), chunk.size(), done) != static_cast<ssize_t>(chunk.size())) std::abort();
  }
  fsync(fd);
  close(fd);
  fd = open(path.c_str(), O_RDWR | flags);
  if (fd < 0) std::abort();
  return fd;
}

struct Result {
  std::vector<double> direct_us;
  uint64_t buffered_done = 0;
  int64_t max_io_submit_ns = 0;
  uint64_t pool_requests = 0;
};

// One thread keeps kDepth reads in flight on fd until `stop`; latencies (µs) go to `latencies`.
void Load(kaio::Service& service, int fd, size_t file_size, std::atomic<bool>& stop,
          std::vector<double>* latencies, uint64_t* done_count, uint32_t seed) {
  auto requester = *kaio::Requester::Create(service);
  void* mem = nullptr;
  if (posix_memalign(&mem, kBlock, kDepth * kBlock) != 0) std::abort();
  char* buf = static_cast<char*>(mem);
  std::mt19937_64 rng(seed);
  const uint64_t blocks = file_size / kBlock;
  std::vector<std::chrono::steady_clock::time_point> started(kDepth);
  auto submit = [&](int slot) {
    started[slot] = std::chrono::steady_clock::now();
    auto t = requester->Read(fd, buf + slot * kBlock, kBlock, static_cast<int64_t>((rng() % blocks) * kBlock), slot);
    if (!t.ok()) std::abort();
  };
  for (int i = 0; i < kDepth; ++i) submit(i);
  kaio::Completion done[kDepth];
  int in_flight = kDepth;
  while (in_flight > 0) {
    size_t n = requester->Wait(absl::MakeSpan(done), 1, absl::Seconds(30));
    auto now = std::chrono::steady_clock::now();
    for (size_t i = 0; i < n; ++i) {
      if (done[i].result != static_cast<int64_t>(kBlock)) std::abort();
      int slot = static_cast<int>(done[i].tag);
      if (latencies != nullptr) {
        latencies->push_back(std::chrono::duration<double, std::micro>(now - started[slot]).count());
      }
      ++*done_count;
      --in_flight;
      if (!stop.load(std::memory_order_relaxed)) {
        submit(slot);
        ++in_flight;
      }
    }
  }
  free(mem);
}

Result RunOnce(bool with_fallback, int direct_fd, int buffered_fd, size_t size, double seconds) {
  posix_fadvise(buffered_fd, 0, 0, POSIX_FADV_DONTNEED);  // cold cache
  posix_fadvise(buffered_fd, 0, 0, POSIX_FADV_RANDOM);    // no readahead: every read is a miss
  kaio::ServiceOptions options;
  options.fallback_threads = with_fallback ? 4 : 0;
  auto service = *kaio::Service::Create(options);
  std::atomic<bool> stop{false};
  Result result;
  uint64_t direct_done = 0;
  std::thread direct([&] { Load(*service, direct_fd, size, stop, &result.direct_us, &direct_done, 1); });
  std::thread buffered([&] { Load(*service, buffered_fd, size, stop, nullptr, &result.buffered_done, 2); });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  direct.join();
  buffered.join();
  kaio::ServiceStats stats = service->Stats();
  result.max_io_submit_ns = stats.max_io_submit_ns;
  result.pool_requests = stats.pool_requests;
  return result;
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()))];
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = argc > 1 ? std::atof(argv[1]) : 5.0;
  std::string dir = argc > 2 ? argv[2] : (getenv("BUILD_WORKING_DIRECTORY") ? getenv("BUILD_WORKING_DIRECTORY") : ".");
  constexpr size_t kSize = size_t{256} << 20;
  std::string direct_path = dir + "/kaio_fallback_direct.dat", buffered_path = dir + "/kaio_fallback_buffered.dat";
  int direct_fd = MakeFile(direct_path, kSize, O_DIRECT);
  int buffered_fd = MakeFile(buffered_path, kSize, 0);
  std::printf("O_DIRECT 4 KiB random reads (iodepth %d) beside buffered cold-cache 4 KiB random reads (iodepth %d), %.0f s each\n",
              kDepth, kDepth, seconds);
  std::printf("%-18s %10s %10s %10s %10s %12s %14s %12s\n", "fallback pool", "direct ops", "p50 us", "p99 us",
              "max us", "buffered ops", "max submit us", "pool reqs");
  for (bool with_fallback : {true, false}) {
    Result r = RunOnce(with_fallback, direct_fd, buffered_fd, kSize, seconds);
    size_t ops = r.direct_us.size();
    double p50 = Percentile(r.direct_us, 50), p99 = Percentile(r.direct_us, 99);
    double max = r.direct_us.empty() ? 0 : r.direct_us.back();
    std::printf("%-18s %10zu %10.0f %10.0f %10.0f %12llu %14.0f %12llu\n", with_fallback ? "on (4 threads)" : "off",
                ops, p50, p99, max, static_cast<unsigned long long>(r.buffered_done), r.max_io_submit_ns / 1000.0,
                static_cast<unsigned long long>(r.pool_requests));
  }
  close(direct_fd);
  close(buffered_fd);
  unlink(direct_path.c_str());
  unlink(buffered_path.c_str());
  return 0;
}
