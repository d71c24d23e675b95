#include "tools/report.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "tools/json.h"

namespace kaio_bench {
namespace {

std::string HumanSize(uint64_t bytes) {
  const char* units[] = {"", "k", "m", "g", "t"};
  int u = 0;
  while (u < 4 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++u;
  }
  return absl::StrCat(bytes, units[u]);
}

std::string Seconds(double s) { return absl::StrFormat("%gs", s); }

std::string Iops(double v) {
  if (v >= 1e6) return absl::StrFormat("%.2fM", v / 1e6);
  if (v >= 1e3) return absl::StrFormat("%.1fk", v / 1e3);
  return absl::StrFormat("%.0f", v);
}

std::string Micros(double us) {
  if (us < 10) return absl::StrFormat("%.2f", us);
  if (us < 100) return absl::StrFormat("%.1f", us);
  return absl::StrFormat("%.0f", us);
}

std::string Ratio(double value, double base) {
  if (base <= 0 || value <= 0) return "-";
  return absl::StrFormat("%.2fx", value / base);
}

const EngineResult* Baseline(const std::vector<EngineResult>& results) {
  for (const EngineResult& r : results) {
    if (r.engine == "kaio" && r.ok && r.ops > 0) return &r;
  }
  return nullptr;
}

std::string CounterValue(double v) {
  if (v == static_cast<double>(static_cast<int64_t>(v))) return absl::StrCat(static_cast<int64_t>(v));
  return absl::StrFormat("%.2f", v);
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

// Round-by-round IOPS ratios against the kaio row (rounds are interleaved, so each pair ran close
// together in time: the median of these is robust to slow drift in the machine's load).
std::vector<double> PairedRatios(const EngineResult& r, const EngineResult* base) {
  std::vector<double> ratios;
  if (base == nullptr || base->round_iops.size() != r.round_iops.size()) return ratios;
  for (size_t i = 0; i < r.round_iops.size(); ++i) {
    if (base->round_iops[i] > 0) ratios.push_back(r.round_iops[i] / base->round_iops[i]);
  }
  return ratios;
}

}  // namespace

void EngineResult::LatencyFromHistogram() {
  p50_us = histogram.Quantile(0.50) / 1000;
  p90_us = histogram.Quantile(0.90) / 1000;
  p99_us = histogram.Quantile(0.99) / 1000;
  p999_us = histogram.Quantile(0.999) / 1000;
  mean_us = histogram.mean() / 1000;
  max_us = static_cast<double>(histogram.max()) / 1000;
}

void MergeRound(EngineResult& into, const EngineResult& r) {
  if (into.engine.empty()) {
    into = r;
    into.round_iops = {r.iops()};
    into.round_cpu_per_op = {r.cpu_us_per_op()};
    return;
  }
  const double w0 = static_cast<double>(into.ops), w1 = static_cast<double>(r.ops);
  auto weighted = [&](double a, double b) { return w0 + w1 > 0 ? (a * w0 + b * w1) / (w0 + w1) : 0; };
  if (!r.ok && into.ok) {
    into.ok = false;
    into.error = r.error;
  }
  into.interrupted = into.interrupted || r.interrupted;
  // Counters: maxima stay maxima, rates and percentages are ops-weighted, the rest add up.
  for (const auto& [name, value] : r.counters) {
    auto it = std::find_if(into.counters.begin(), into.counters.end(), [&](const auto& c) { return c.first == name; });
    if (it == into.counters.end()) {
      into.counters.push_back({name, value});
    } else if (absl::StartsWith(name, "max_") || name == "pool_threads") {
      it->second = std::max(it->second, value);
    } else if (absl::EndsWith(name, "_pct") || absl::EndsWith(name, "per_op") || name == "average_batch") {
      it->second = weighted(it->second, value);
    } else {
      it->second += value;
    }
  }
  if (into.has_histogram && r.has_histogram) {
    into.histogram.Merge(r.histogram);
  } else {
    into.has_histogram = false;
    into.p50_us = weighted(into.p50_us, r.p50_us);
    into.p90_us = weighted(into.p90_us, r.p90_us);
    into.p99_us = weighted(into.p99_us, r.p99_us);
    into.p999_us = weighted(into.p999_us, r.p999_us);
    into.mean_us = weighted(into.mean_us, r.mean_us);
    into.max_us = std::max(into.max_us, r.max_us);
  }
  into.seconds += r.seconds;
  into.ops += r.ops;
  into.bytes += r.bytes;
  into.writes += r.writes;
  into.io_errors += r.io_errors;
  into.short_ios += r.short_ios;
  if (into.first_io_error.empty()) into.first_io_error = r.first_io_error;
  into.user_s += r.user_s;
  into.sys_s += r.sys_s;
  into.voluntary_csw += r.voluntary_csw;
  into.involuntary_csw += r.involuntary_csw;
  into.round_iops.push_back(r.iops());
  into.round_cpu_per_op.push_back(r.cpu_us_per_op());
  if (into.has_histogram) into.LatencyFromHistogram();
  // Recompute what is a ratio of two sums.
  double submitted = 0, calls = 0;
  for (const auto& [name, value] : into.counters) {
    if (name == "kernel_submitted") submitted = value;
    if (name == "io_submit_calls") calls = value;
  }
  for (auto& [name, value] : into.counters) {
    if (name == "average_batch" && calls > 0) value = submitted / calls;
  }
}

std::string DescribeWorkload(const Options& o) {
  std::string s = absl::StrCat(o.rw, " bs=", HumanSize(o.bs), " iodepth=", o.iodepth, " threads=", o.threads,
                               " direct=", o.direct ? 1 : 0);
  if (!o.direct) absl::StrAppend(&s, " cache=", o.cache_warm ? "warm" : "cold");
  if (o.is_mixed()) absl::StrAppend(&s, " rwmixread=", o.rwmixread);
  absl::StrAppend(&s, " size=", HumanSize(o.size), " nrfiles=", o.nrfiles);
  if (o.ops > 0) {
    absl::StrAppend(&s, " ops=", o.ops);
  } else {
    absl::StrAppend(&s, " ramp=", Seconds(o.ramp_s), " runtime=", Seconds(o.runtime_s));
  }
  absl::StrAppend(&s, " seed=", o.seed);
  if (o.rounds > 1) absl::StrAppend(&s, " rounds=", o.rounds);
  return s;
}

void PrintTable(const Options& o, const Environment& env, const std::vector<EngineResult>& results, FILE* out) {
  std::fprintf(out, "\nkaio_bench: %s\n", DescribeWorkload(o).c_str());
  std::fprintf(out, "files: %s (%s%s); kernel %s; %d CPUs; %s\n", absl::StrJoin(env.files, ", ").c_str(),
               env.filesystem.c_str(), env.temporary_files ? ", temporary" : "", env.kernel.c_str(), env.cpus,
               env.started_at.c_str());
  const EngineResult* base = Baseline(results);
  std::fprintf(out, "\n%-12s %9s %8s %8s %8s %8s %8s %9s %12s %7s %10s %10s\n", "engine", "IOPS", "MiB/s", "p50 us",
               "p90 us", "p99 us", "p99.9 us", "CPU us/op", "(usr+sys)", "csw/op", "IOPS/kaio", "CPU/kaio");
  for (const EngineResult& r : results) {
    if (!r.ok && r.ops == 0) {
      std::fprintf(out, "%-12s FAILED: %s\n", r.engine.c_str(), r.error.c_str());
      continue;
    }
    double per_op_usr = r.ops ? r.user_s * 1e6 / static_cast<double>(r.ops) : 0;
    double per_op_sys = r.ops ? r.sys_s * 1e6 / static_cast<double>(r.ops) : 0;
    std::fprintf(out, "%-12s %9s %8.1f %8s %8s %8s %8s %9.2f %12s %7.2f %10s %10s%s\n", r.engine.c_str(),
                 Iops(r.iops()).c_str(), r.mib_s(), Micros(r.p50_us).c_str(), Micros(r.p90_us).c_str(),
                 Micros(r.p99_us).c_str(), Micros(r.p999_us).c_str(), r.cpu_us_per_op(),
                 absl::StrFormat("(%.2f+%.2f)", per_op_usr, per_op_sys).c_str(), r.csw_per_op(),
                 base ? Ratio(r.iops(), base->iops()).c_str() : "-",
                 base ? Ratio(r.cpu_us_per_op(), base->cpu_us_per_op()).c_str() : "-",
                 r.interrupted ? "  (interrupted)" : (!r.ok ? "  (FAILED, see below)" : ""));
  }
  std::fprintf(out, "\n");
  if (o.rounds > 1) {
    std::fprintf(out, "per-round IOPS and CPU us/op (%d interleaved rounds; the table merges them):\n", o.rounds);
    for (const EngineResult& r : results) {
      std::vector<std::string> parts;
      for (size_t i = 0; i < r.round_iops.size(); ++i) {
        parts.push_back(absl::StrCat(Iops(r.round_iops[i]), "/", absl::StrFormat("%.2f", r.round_cpu_per_op[i])));
      }
      double median = Median(r.round_iops);
      double low = r.round_iops.empty() ? 0 : *std::min_element(r.round_iops.begin(), r.round_iops.end());
      double high = r.round_iops.empty() ? 0 : *std::max_element(r.round_iops.begin(), r.round_iops.end());
      std::string paired;
      std::vector<double> ratios = PairedRatios(r, base);
      if (!ratios.empty() && &r != base) {
        std::vector<std::string> rs;
        for (double x : ratios) rs.push_back(absl::StrFormat("%.2f", x));
        paired = absl::StrFormat("; IOPS/kaio by round %s, median %.2fx", absl::StrJoin(rs, " "), Median(ratios));
      }
      std::fprintf(out, "  %-12s %s  (IOPS spread %.0f%% of the median%s)\n", r.engine.c_str(),
                   absl::StrJoin(parts, "  ").c_str(), median > 0 ? (high - low) / median * 100 : 0.0, paired.c_str());
    }
    std::fprintf(out, "\n");
  }
  for (const EngineResult& r : results) {
    if (!r.counters.empty()) {
      std::vector<std::string> parts;
      for (const auto& [name, value] : r.counters) parts.push_back(absl::StrCat(name, "=", CounterValue(value)));
      std::fprintf(out, "%s counters (measured window): %s\n", r.engine.c_str(), absl::StrJoin(parts, " ").c_str());
    }
  }
  for (const EngineResult& r : results) {
    if (!r.ok && r.ops > 0) std::fprintf(out, "%s FAILED: %s\n", r.engine.c_str(), r.error.c_str());
    if (r.ok && !r.error.empty()) std::fprintf(out, "%s note: %s\n", r.engine.c_str(), r.error.c_str());
    if (r.io_errors > 0) {
      std::fprintf(out, "%s: %llu I/O errors; first: %s\n", r.engine.c_str(),
                   static_cast<unsigned long long>(r.io_errors), r.first_io_error.c_str());
    }
    if (r.short_ios > 0) {
      std::fprintf(out, "%s: %llu short transfers\n", r.engine.c_str(), static_cast<unsigned long long>(r.short_ios));
    }
  }
  std::fprintf(out, "engines:\n");
  for (const EngineResult& r : results) {
    std::fprintf(out, "  %-11s %s%s\n", r.engine.c_str(), r.description.c_str(),
                 r.cpu_source != EngineResult().cpu_source ? absl::StrCat(" [CPU: ", r.cpu_source, "]").c_str() : "");
  }
  std::fprintf(out,
               "CPU us/op: whole-process user+system CPU (getrusage RUSAGE_SELF) over the measured window / I/Os "
               "completed in it, helper threads included.\n");
  if (base == nullptr) std::fprintf(out, "(no successful kaio row: no ratios)\n");
}

std::string ToJson(const Options& o, const Environment& env, const std::vector<EngineResult>& results) {
  JsonWriter w;
  w.BeginObject();
  w.String("tool", "kaio_bench");
  w.String("workload", DescribeWorkload(o));
  w.BeginObject("config");
  w.String("rw", o.rw);
  w.Integer("bs", o.bs);
  w.Integer("iodepth", o.iodepth);
  w.Integer("threads", o.threads);
  w.Bool("direct", o.direct);
  w.String("cache", o.cache_warm ? "warm" : "cold");
  w.Integer("rwmixread", o.rwmixread);
  w.Integer("size", static_cast<int64_t>(o.size));
  w.Integer("nrfiles", o.nrfiles);
  w.Number("ramp_s", o.ramp_s);
  w.Number("runtime_s", o.runtime_s);
  w.Integer("ops", static_cast<int64_t>(o.ops));
  w.Integer("seed", static_cast<int64_t>(o.seed));
  w.Integer("rounds", o.rounds);
  w.EndObject();
  w.BeginObject("environment");
  w.String("kernel", env.kernel);
  w.Integer("cpus", env.cpus);
  w.String("filesystem", env.filesystem);
  w.Bool("temporary_files", env.temporary_files);
  w.BeginArray("files");
  for (const std::string& f : env.files) w.String("", f);
  w.EndArray();
  w.String("started_at", env.started_at);
  w.EndObject();
  const EngineResult* base = Baseline(results);
  w.BeginArray("engines");
  for (const EngineResult& r : results) {
    w.BeginObject();
    w.String("engine", r.engine);
    w.String("description", r.description);
    w.Bool("ok", r.ok);
    w.Bool("interrupted", r.interrupted);
    if (!r.error.empty()) w.String("error", r.error);
    w.Number("seconds", r.seconds);
    w.Integer("ops", static_cast<int64_t>(r.ops));
    w.Integer("bytes", static_cast<int64_t>(r.bytes));
    w.Integer("writes", static_cast<int64_t>(r.writes));
    w.Number("iops", r.iops());
    w.Number("mib_per_s", r.mib_s());
    w.BeginObject("latency_us");
    w.Number("p50", r.p50_us);
    w.Number("p90", r.p90_us);
    w.Number("p99", r.p99_us);
    w.Number("p99.9", r.p999_us);
    w.Number("mean", r.mean_us);
    w.Number("max", r.max_us);
    w.EndObject();
    w.BeginObject("cpu");
    w.String("source", r.cpu_source);
    w.Number("user_s", r.user_s);
    w.Number("sys_s", r.sys_s);
    w.Number("us_per_op", r.cpu_us_per_op());
    w.Integer("voluntary_csw", static_cast<int64_t>(r.voluntary_csw));
    w.Integer("involuntary_csw", static_cast<int64_t>(r.involuntary_csw));
    w.Number("csw_per_op", r.csw_per_op());
    w.EndObject();
    if (r.round_iops.size() > 1) {
      w.BeginArray("round_iops");
      for (double v : r.round_iops) w.Number("", v);
      w.EndArray();
      w.BeginArray("round_cpu_us_per_op");
      for (double v : r.round_cpu_per_op) w.Number("", v);
      w.EndArray();
      std::vector<double> ratios = PairedRatios(r, base);
      if (!ratios.empty()) {
        w.BeginArray("round_iops_vs_kaio");
        for (double v : ratios) w.Number("", v);
        w.EndArray();
        w.Number("median_round_iops_vs_kaio", Median(ratios));
      }
    }
    w.Integer("io_errors", static_cast<int64_t>(r.io_errors));
    if (!r.first_io_error.empty()) w.String("first_io_error", r.first_io_error);
    w.Integer("short_ios", static_cast<int64_t>(r.short_ios));
    if (base != nullptr && r.ok && r.ops > 0) {
      w.BeginObject("vs_kaio");
      w.Number("iops", r.iops() / base->iops());
      w.Number("cpu_per_op", base->cpu_us_per_op() > 0 ? r.cpu_us_per_op() / base->cpu_us_per_op() : 0);
      w.EndObject();
    }
    if (!r.counters.empty()) {
      w.BeginObject("counters");
      for (const auto& [name, value] : r.counters) w.Number(name, value);
      w.EndObject();
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return w.text();
}

}  // namespace kaio_bench
