// posix_sigbench: small POSIX AIO requests, each announcing its completion with its own signal
// (SIGEV_SIGNAL), the pattern of a program that fio's posixaio engine (which polls aio_error and
// sleeps in aio_suspend) does not cover: every request costs a queued real-time signal besides the
// I/O. It keeps --iodepth requests in flight on one file, takes each completion's signal, checks it
// with aio_error/aio_return, and submits the next request at a new random offset. Two ways to take
// the signals: --take=handler (the default), a SA_SIGINFO handler that marks the request done while
// the program sleeps in sigsuspend; --take=sigwaitinfo, the signal blocked and taken from the queue.
//
//   posix_sigbench --file=F --size=256m [--rw=randwrite|randread] [--bs=4k] [--iodepth=16]
//                  [--take=handler|sigwaitinfo] [--runtime=3] [--ramp=1] [--json=OUT]
//
// The same binary runs under glibc and under LD_PRELOAD=libkaio_posix.so (scripts/
// fio_posixaio_compare.sh does both), which is why it uses nothing but the C library and parses its
// few arguments itself: a program under test must not bring a second copy of what the preload
// links. --json writes the fields of fio's JSON output that the script reads (jobs[0]: error,
// job_runtime, read/write total_ios, iops, clat_ns mean and 99th percentile). Exit status 1 with a
// message on any wrong answer (a signal before its request finished, a short result).
#include <aio.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

struct Options {
  std::string file;
  uint64_t size = 256ull << 20;
  bool write = true;
  uint64_t bs = 4096;
  int iodepth = 16;
  double runtime_s = 3;
  double ramp_s = 1;
  std::string json;
  bool handler = true;
};

constexpr int kMaxDepth = 1024;
// g_done[i]: request i's signal arrived. Set by the handler, cleared by the main loop while the
// signal is blocked.
volatile sig_atomic_t g_done[kMaxDepth];
struct aiocb* g_first_cb = nullptr;

void OnCompletion(int, siginfo_t* info, void*) {
  auto* cb = static_cast<struct aiocb*>(info->si_value.sival_ptr);
  if (info->si_code == SI_ASYNCIO && g_first_cb != nullptr && cb >= g_first_cb &&
      cb < g_first_cb + kMaxDepth) {
    g_done[cb - g_first_cb] = 1;
  }
}

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "posix_sigbench: %s\n", message.c_str());
  std::exit(1);
}

// fio's sizes: a number with an optional k, m or g (powers of 1024).
uint64_t ParseSize(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  errno = 0;
  const unsigned long long n = std::strtoull(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str()) Die("--" + flag + ": not a size: " + text);
  const std::string suffix(end);
  int shift = 0;
  if (suffix == "k" || suffix == "K")
    shift = 10;
  else if (suffix == "m" || suffix == "M")
    shift = 20;
  else if (suffix == "g" || suffix == "G")
    shift = 30;
  else if (!suffix.empty())
    Die("--" + flag + ": unknown unit in " + text);
  return static_cast<uint64_t>(n) << shift;
}

double ParseSeconds(const std::string& flag, const std::string& text) {
  char* end = nullptr;
  const double s = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || *end != '\0' || s < 0) Die("--" + flag + ": not a number of seconds: " + text);
  return s;
}

Options Parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    if (arg.rfind("--", 0) != 0 || eq == std::string::npos) Die("arguments are --name=value; got " + arg);
    const std::string name = arg.substr(2, eq - 2), value = arg.substr(eq + 1);
    if (name == "file")
      o.file = value;
    else if (name == "size")
      o.size = ParseSize(name, value);
    else if (name == "bs")
      o.bs = ParseSize(name, value);
    else if (name == "iodepth")
      o.iodepth = std::atoi(value.c_str());
    else if (name == "runtime")
      o.runtime_s = ParseSeconds(name, value);
    else if (name == "ramp")
      o.ramp_s = ParseSeconds(name, value);
    else if (name == "json")
      o.json = value;
    else if (name == "rw" && (value == "randwrite" || value == "randread"))
      o.write = value == "randwrite";
    else if (name == "take" && (value == "handler" || value == "sigwaitinfo"))
      o.handler = value == "handler";
    else
      Die("unknown argument " + arg);
  }
  if (o.file.empty()) Die("--file is required");
  if (o.iodepth < 1 || o.iodepth > kMaxDepth) Die("--iodepth must be 1..1024");
  if (o.bs == 0 || o.size < o.bs) Die("--size must hold at least one --bs block");
  return o;
}

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

uint64_t NextRandom(uint64_t& state) {  // xorshift64
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  return state;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = Parse(argc, argv);
  const int fd = open(o.file.c_str(), O_RDWR);
  if (fd < 0) Die(o.file + ": " + strerror(errno));
  const int signo = SIGRTMIN + 1;
  sigset_t wait_set;
  sigemptyset(&wait_set);
  sigaddset(&wait_set, signo);
  // Blocked before any AIO thread exists (glibc's helpers and kaio's block every signal anyway), so
  // every completion's signal waits, queued, for sigwaitinfo or sigsuspend.
  if (sigprocmask(SIG_BLOCK, &wait_set, nullptr) != 0) Die("sigprocmask failed");

  const uint64_t blocks = o.size / o.bs;
  std::vector<struct aiocb> cbs(static_cast<size_t>(o.iodepth));
  g_first_cb = cbs.data();
  if (o.handler) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = OnCompletion;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(signo, &sa, nullptr) != 0) Die("sigaction failed");
  }
  std::vector<int64_t> started(cbs.size());
  std::vector<char*> bufs(cbs.size());
  for (char*& buf : bufs) {
    if (posix_memalign(reinterpret_cast<void**>(&buf), 4096, o.bs) != 0) Die("out of memory");
    memset(buf, 'k', o.bs);
  }
  uint64_t rng = 0x9e3779b97f4a7c15ull;
  auto submit = [&](size_t i) {
    struct aiocb& cb = cbs[i];
    memset(&cb, 0, sizeof cb);
    cb.aio_fildes = fd;
    cb.aio_buf = bufs[i];
    cb.aio_nbytes = o.bs;
    cb.aio_offset = static_cast<off_t>((NextRandom(rng) % blocks) * o.bs);
    cb.aio_sigevent.sigev_notify = SIGEV_SIGNAL;
    cb.aio_sigevent.sigev_signo = signo;
    cb.aio_sigevent.sigev_value.sival_ptr = &cb;
    started[i] = NowNs();
    const int rc = o.write ? aio_write(&cb) : aio_read(&cb);
    if (rc != 0) Die(std::string(o.write ? "aio_write" : "aio_read") + ": " + strerror(errno));
  };

  const int64_t begin = NowNs();
  const int64_t measure_from = begin + static_cast<int64_t>(o.ramp_s * 1e9);
  const int64_t stop_at = measure_from + static_cast<int64_t>(o.runtime_s * 1e9);
  std::vector<uint32_t> latencies_ns;  // of requests that completed in the measured window
  latencies_ns.reserve(1 << 20);
  for (size_t i = 0; i < cbs.size(); ++i) submit(i);
  size_t in_flight = cbs.size();
  int64_t measured_end = 0;
  sigset_t sleep_mask;  // what sigsuspend waits with: the mask before, without the signal
  sigprocmask(SIG_BLOCK, nullptr, &sleep_mask);
  sigdelset(&sleep_mask, signo);
  std::vector<size_t> ready;
  while (in_flight > 0) {
    ready.clear();
    if (o.handler) {
      // The signal is blocked here, so a handler cannot run between the look and the sleep: a
      // completion after the look is taken by sigsuspend, which unblocks and waits in one step.
      for (size_t i = 0; i < cbs.size(); ++i) {
        if (g_done[i]) g_done[i] = 0, ready.push_back(i);
      }
      if (ready.empty()) {
        sigsuspend(&sleep_mask);  // returns -1/EINTR after the handler ran
        continue;
      }
    } else {
      siginfo_t info;
      if (sigwaitinfo(&wait_set, &info) < 0) {
        if (errno == EINTR) continue;
        Die(std::string("sigwaitinfo: ") + strerror(errno));
      }
      auto* cb = static_cast<struct aiocb*>(info.si_value.sival_ptr);
      if (info.si_code != SI_ASYNCIO)
        Die("a signal that is not an AIO completion (si_code " + std::to_string(info.si_code) + ")");
      if (cb < cbs.data() || cb >= cbs.data() + cbs.size())
        Die("a signal whose sival_ptr names no request of ours");
      ready.push_back(static_cast<size_t>(cb - cbs.data()));
    }
    const int64_t now = NowNs();
    for (size_t i : ready) {
      struct aiocb* cb = &cbs[i];
      const int err = aio_error(cb);
      if (err != 0)
        Die("aio_error after the request's signal: " +
            std::string(err == EINPROGRESS ? "EINPROGRESS" : strerror(err)));
      const ssize_t n = aio_return(cb);
      if (n != static_cast<ssize_t>(o.bs))
        Die("aio_return " + std::to_string(n) + ", wanted " + std::to_string(o.bs));
      if (now >= measure_from && now < stop_at) {
        latencies_ns.push_back(static_cast<uint32_t>(std::min<int64_t>(now - started[i], UINT32_MAX)));
        measured_end = now;
      }
      if (now < stop_at) {
        submit(i);
      } else {
        --in_flight;
      }
    }
  }
  close(fd);

  const double window_s = measured_end > measure_from ? (measured_end - measure_from) / 1e9 : 0;
  const double iops = window_s > 0 ? latencies_ns.size() / window_s : 0;
  double mean_ns = 0, p99_ns = 0;
  if (!latencies_ns.empty()) {
    for (uint32_t l : latencies_ns) mean_ns += l;
    mean_ns /= latencies_ns.size();
    const size_t k = latencies_ns.size() * 99 / 100;
    std::nth_element(latencies_ns.begin(), latencies_ns.begin() + k, latencies_ns.end());
    p99_ns = latencies_ns[k];
  }
  std::printf(
      "%s bs=%llu iodepth=%d: %.0f IOPS, mean %.1f us, p99 %.1f us, "
      "%zu requests measured\n",
      o.write ? "randwrite" : "randread", static_cast<unsigned long long>(o.bs), o.iodepth, iops,
      mean_ns / 1000, p99_ns / 1000, latencies_ns.size());
  if (!o.json.empty()) {
    FILE* f = std::fopen(o.json.c_str(), "w");
    if (f == nullptr) Die(o.json + ": " + strerror(errno));
    auto ddir = [&](bool active) {
      std::fprintf(f,
                   "{\"total_ios\": %zu, \"iops\": %.1f, \"clat_ns\": "
                   "{\"mean\": %.1f, \"percentile\": {\"99.000000\": %.1f}}}",
                   active ? latencies_ns.size() : 0, active ? iops : 0.0, active ? mean_ns : 0.0,
                   active ? p99_ns : 0.0);
    };
    std::fprintf(f, "{\"jobs\": [{\"error\": 0, \"job_runtime\": %.0f, \"read\": ", window_s * 1000);
    ddir(!o.write);
    std::fprintf(f, ", \"write\": ");
    ddir(o.write);
    std::fprintf(f, "}]}\n");
    std::fclose(f);
  }
  return 0;
}
