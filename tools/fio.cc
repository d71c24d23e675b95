// Runs Debian's fio with the same workload, as the outside reference (engine "fio-<ioengine>").
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"
#include "tools/run.h"

extern char** environ;

namespace kaio_bench {
namespace {

std::string Ms(double seconds) { return absl::StrCat(static_cast<int64_t>(std::llround(seconds * 1000)), "ms"); }

using Json = nlohmann::json;

const Json& Null() {
  static const Json* const null = new Json();
  return *null;
}

// Member `key` of `j`, or null when `j` is not an object or lacks it (so lookups chain).
const Json& At(const Json& j, const char* key) {
  if (!j.is_object()) return Null();
  auto it = j.find(key);
  return it == j.end() ? Null() : *it;
}

// A number, or 0 when `j` is something else (fio leaves out what a run did not do).
double Num(const Json& j) { return j.is_number() ? j.get<double>() : 0; }

double Percentile(const Json& lat, const char* key) {
  return Num(At(At(lat, "percentile"), key)) / 1000.0;  // ns -> us
}

}  // namespace

EngineResult RunFio(const Options& o, const std::vector<BenchFile>& files, const std::string& ioengine) {
  EngineResult r;
  r.engine = absl::StrCat("fio-", ioengine);
  std::vector<std::string> paths;
  for (const BenchFile& f : files) paths.push_back(absl::StrReplaceAll(f.path, {{":", "\\:"}}));

  const char* tmp = std::getenv("TMPDIR");
  std::string out_tmpl = absl::StrCat(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp", "/kaio_bench_fio.XXXXXX");
  std::vector<char> out_name(out_tmpl.begin(), out_tmpl.end());
  out_name.push_back('\0');
  int out_fd = mkstemp(out_name.data());
  if (out_fd < 0) {
    r.error = absl::StrCat("creating fio's output file: ", std::strerror(errno));
    return r;
  }
  close(out_fd);
  const std::string out_path = out_name.data();

  std::vector<std::string> args = {
      o.fio,
      "--name=kaio_bench",
      absl::StrCat("--filename=", absl::StrJoin(paths, ":")),
      absl::StrCat("--ioengine=", ioengine),
      absl::StrCat("--rw=", o.rw),
      absl::StrCat("--bs=", o.bs),
      absl::StrCat("--iodepth=", o.iodepth),
      absl::StrCat("--numjobs=", o.threads),
      "--thread=1",
      "--group_reporting=1",
      absl::StrCat("--direct=", o.direct ? 1 : 0),
      absl::StrCat("--size=", o.size * static_cast<uint64_t>(o.nrfiles)),
      absl::StrCat("--rwmixread=", o.rwmixread),
      absl::StrCat("--randseed=", o.seed),
      "--norandommap=1",
      absl::StrCat("--invalidate=", (!o.direct && o.cache_warm) ? 0 : 1),
      "--allow_file_create=0",
      "--lat_percentiles=1",
      "--percentile_list=50:90:99:99.9",
      "--output-format=json",
      absl::StrCat("--output=", out_path),
  };
  if (o.nrfiles > 1) args.push_back("--file_service_type=random");
  if (o.ops > 0) {
    // --number_ios does not stop a job before its other end conditions; --io_size does.
    args.push_back(absl::StrCat("--io_size=", o.ops / static_cast<uint64_t>(o.threads) * o.bs));
  } else {
    args.push_back("--time_based=1");
    args.push_back(absl::StrCat("--runtime=", Ms(o.runtime_s)));
    if (o.ramp_s > 0) args.push_back(absl::StrCat("--ramp_time=", Ms(o.ramp_s)));
  }
  {
    std::vector<std::string> shown;
    for (size_t i = 1; i < args.size(); ++i) {
      if (!absl::StartsWith(args[i], "--output")) shown.push_back(args[i]);
    }
    r.description = absl::StrCat("fio ", absl::StrJoin(shown, " "));
  }

  // Warm (or drop) the page cache the way the other engines get it.
  {
    std::vector<int> fds;
    for (const BenchFile& f : files) fds.push_back(open(f.path.c_str(), O_RDONLY | O_CLOEXEC));
    absl::Status s = PrimeCache(o, fds);
    for (int fd : fds) close(fd);
    if (!s.ok()) {
      r.error = std::string(s.message());
      unlink(out_path.c_str());
      return r;
    }
  }

  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  struct rusage before, after;
  getrusage(RUSAGE_CHILDREN, &before);
  pid_t pid;
  int rc = posix_spawnp(&pid, o.fio.c_str(), nullptr, nullptr, argv.data(), environ);
  if (rc != 0) {
    r.error = absl::StrCat("cannot run ", o.fio, ": ", std::strerror(rc), " (install Debian's fio, or pass --fio=PATH)");
    unlink(out_path.c_str());
    return r;
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  getrusage(RUSAGE_CHILDREN, &after);
  std::ifstream in(out_path);
  std::stringstream text;
  text << in.rdbuf();
  unlink(out_path.c_str());
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    r.error = absl::StrCat("fio failed (status ", status, "); ran: ", absl::StrJoin(args, " "));
    return r;
  }
  // fio may print notes before the JSON document.
  std::string doc = text.str();
  size_t brace = doc.find('{');
  if (brace == std::string::npos) {
    r.error = "fio wrote no JSON";
    return r;
  }
  // No exceptions: a document that does not parse is a discarded value.
  const Json json = Json::parse(doc.substr(brace), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    r.error = "parsing fio's JSON: not a JSON document";
    return r;
  }
  const Json& jobs = At(json, "jobs");
  const Json& job = jobs.is_array() && !jobs.empty() ? jobs[0] : Null();
  const Json& read = At(job, "read");
  const Json& write = At(job, "write");
  double read_ios = Num(At(read, "total_ios")), write_ios = Num(At(write, "total_ios"));
  double runtime_ms = std::max(Num(At(read, "runtime")), Num(At(write, "runtime")));
  r.ops = static_cast<uint64_t>(read_ios + write_ios);
  r.writes = static_cast<uint64_t>(write_ios);
  r.bytes = static_cast<uint64_t>(Num(At(read, "io_bytes")) + Num(At(write, "io_bytes")));
  // fio's IOPS (summed over directions); the window is whatever makes ops / seconds equal to it.
  double iops = Num(At(read, "iops")) + Num(At(write, "iops"));
  r.seconds = iops > 0 ? static_cast<double>(r.ops) / iops : runtime_ms / 1000.0;
  const Json& lat = At(read_ios >= write_ios ? read : write, "lat_ns");
  r.p50_us = Percentile(lat, "50.000000");
  r.p90_us = Percentile(lat, "90.000000");
  r.p99_us = Percentile(lat, "99.000000");
  r.p999_us = Percentile(lat, "99.900000");
  r.mean_us = Num(At(lat, "mean")) / 1000.0;
  r.max_us = Num(At(lat, "max")) / 1000.0;
  // CPU: the whole fio process (getrusage RUSAGE_CHILDREN), as for the other engines; fio's own
  // usr_cpu/sys_cpu come from its job threads only and miss helper threads (glibc's AIO threads),
  // so they are kept as counters. The whole-process figure includes fio's start-up and the ramp:
  // I/Os during the ramp are estimated at the measured rate.
  auto seconds = [](const struct timeval& a, const struct timeval& b) {
    return static_cast<double>(a.tv_sec - b.tv_sec) + static_cast<double>(a.tv_usec - b.tv_usec) / 1e6;
  };
  double scale = o.ops > 0 ? 1.0 : o.runtime_s / (o.ramp_s + o.runtime_s);  // share of the run measured
  r.user_s = seconds(after.ru_utime, before.ru_utime) * scale;
  r.sys_s = seconds(after.ru_stime, before.ru_stime) * scale;
  r.voluntary_csw = static_cast<uint64_t>(static_cast<double>(after.ru_nvcsw - before.ru_nvcsw) * scale);
  r.involuntary_csw = static_cast<uint64_t>(static_cast<double>(after.ru_nivcsw - before.ru_nivcsw) * scale);
  r.cpu_source = "getrusage(RUSAGE_CHILDREN): whole fio process, scaled by runtime/(ramp+runtime)";
  double job_runtime_s = runtime_ms / 1000.0;
  if (r.ops > 0) {
    r.counters.push_back({"fio_job_threads_cpu_us_per_op",
                          (Num(At(job, "usr_cpu")) + Num(At(job, "sys_cpu"))) / 100.0 * job_runtime_s * 1e6 /
                              static_cast<double>(r.ops)});
  }
  r.counters.push_back({"fio_job_usr_cpu_pct", Num(At(job, "usr_cpu"))});
  r.counters.push_back({"fio_job_sys_cpu_pct", Num(At(job, "sys_cpu"))});
  r.counters.push_back({"fio_job_ctx", Num(At(job, "ctx"))});
  r.ok = r.ops > 0;
  if (!r.ok) r.error = "fio completed no I/O";
  if (Num(At(job, "error")) != 0) r.error = absl::StrCat("fio job error ", Num(At(job, "error")));
  return r;
}

}  // namespace kaio_bench
