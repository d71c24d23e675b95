// Results of engine runs, and the two ways kaio_bench prints them: a table with ratios against the
// kaio row, and JSON.
#ifndef KAIO_TOOLS_REPORT_H_
#define KAIO_TOOLS_REPORT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "tools/bench.h"

namespace kaio_bench {

struct EngineResult {
  std::string engine;
  std::string description;
  bool ok = false;
  bool interrupted = false;
  std::string error;  // why the run failed (ok == false), or a warning

  double seconds = 0;  // measured window
  uint64_t ops = 0;
  uint64_t bytes = 0;
  uint64_t writes = 0;
  uint64_t io_errors = 0;
  uint64_t short_ios = 0;
  std::string first_io_error;

  // Latency, microseconds.
  double p50_us = 0, p90_us = 0, p99_us = 0, p999_us = 0, mean_us = 0, max_us = 0;

  // CPU over the measured window.
  double user_s = 0, sys_s = 0;
  uint64_t voluntary_csw = 0, involuntary_csw = 0;
  std::string cpu_source = "getrusage(RUSAGE_SELF), whole process";

  std::vector<std::pair<std::string, double>> counters;

  // Engines measured here keep their histogram, so rounds merge exactly; fio's percentiles are
  // merged as an ops-weighted mean.
  bool has_histogram = false;
  Histogram histogram;
  std::vector<double> round_iops;        // one per round
  std::vector<double> round_cpu_per_op;  // one per round

  // Sets the latency fields from `histogram`.
  void LatencyFromHistogram();

  double iops() const { return seconds > 0 ? static_cast<double>(ops) / seconds : 0; }
  double mib_s() const { return seconds > 0 ? static_cast<double>(bytes) / seconds / (1 << 20) : 0; }
  double cpu_us_per_op() const { return ops > 0 ? (user_s + sys_s) * 1e6 / static_cast<double>(ops) : 0; }
  double csw_per_op() const {
    return ops > 0 ? static_cast<double>(voluntary_csw + involuntary_csw) / static_cast<double>(ops) : 0;
  }
};

struct Environment {
  std::string kernel;
  int cpus = 0;
  std::string filesystem;  // of the first file
  std::vector<std::string> files;
  bool temporary_files = false;
  std::string started_at;  // local time
};

// Adds round `r` (of the same engine) into `into`: sums of counts, times and CPU, merged latency.
void MergeRound(EngineResult& into, const EngineResult& r);

// One line describing the workload, fio style.
std::string DescribeWorkload(const Options& o);

void PrintTable(const Options& o, const Environment& env, const std::vector<EngineResult>& results, FILE* out);
std::string ToJson(const Options& o, const Environment& env, const std::vector<EngineResult>& results);

}  // namespace kaio_bench

#endif  // KAIO_TOOLS_REPORT_H_
