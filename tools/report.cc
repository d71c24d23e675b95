#include "tools/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "absl/flags/marshalling.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "tools/size_flag.h"

namespace kaio_bench {
namespace {

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
  std::string s = absl::StrCat(o.rw, " bs=", kaio_tools::FormatSize(o.bs), " iodepth=", o.iodepth, " threads=", o.threads,
                               " direct=", o.direct ? 1 : 0);
  if (!o.direct) absl::StrAppend(&s, " cache=", o.cache_warm ? "warm" : "cold");
  if (o.is_mixed()) absl::StrAppend(&s, " rwmixread=", o.rwmixread);
  absl::StrAppend(&s, " size=", kaio_tools::FormatSize(o.size), " nrfiles=", o.nrfiles);
  if (o.ops > 0) {
    absl::StrAppend(&s, " ops=", o.ops);
  } else {
    absl::StrAppend(&s, " ramp=", absl::UnparseFlag(Seconds{o.ramp_s}), " runtime=", absl::UnparseFlag(Seconds{o.runtime_s}));
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
  // ordered_json keeps the keys in the order written here (nlohmann::json would sort them).
  using Json = nlohmann::ordered_json;
  // Doubles with 10 significant digits (nlohmann would print all 17 a round trip needs: 2.0003612210000004
  // for 2.000361221), and null for a value that is not finite.
  auto number = [](double v) {
    return std::isfinite(v) ? Json(std::strtod(absl::StrFormat("%.10g", v).c_str(), nullptr)) : Json(nullptr);
  };
  auto numbers = [&](const std::vector<double>& values) {
    Json a = Json::array();
    for (double v : values) a.push_back(number(v));
    return a;
  };
  Json doc;
  doc["tool"] = "kaio_bench";
  doc["workload"] = DescribeWorkload(o);
  doc["config"] = {
      {"rw", o.rw},
      {"bs", o.bs},
      {"iodepth", o.iodepth},
      {"threads", o.threads},
      {"direct", o.direct},
      {"cache", o.cache_warm ? "warm" : "cold"},
      {"rwmixread", o.rwmixread},
      {"size", o.size},
      {"nrfiles", o.nrfiles},
      {"ramp_s", number(o.ramp_s)},
      {"runtime_s", number(o.runtime_s)},
      {"ops", o.ops},
      {"seed", o.seed},
      {"rounds", o.rounds},
  };
  doc["environment"] = {
      {"kernel", env.kernel},
      {"cpus", env.cpus},
      {"filesystem", env.filesystem},
      {"temporary_files", env.temporary_files},
      {"files", env.files},
      {"started_at", env.started_at},
  };
  const EngineResult* base = Baseline(results);
  Json engines = Json::array();
  for (const EngineResult& r : results) {
    Json e;
    e["engine"] = r.engine;
    e["description"] = r.description;
    e["ok"] = r.ok;
    e["interrupted"] = r.interrupted;
    if (!r.error.empty()) e["error"] = r.error;
    e["seconds"] = number(r.seconds);
    e["ops"] = r.ops;
    e["bytes"] = r.bytes;
    e["writes"] = r.writes;
    e["iops"] = number(r.iops());
    e["mib_per_s"] = number(r.mib_s());
    e["latency_us"] = {
        {"p50", number(r.p50_us)},   {"p90", number(r.p90_us)},   {"p99", number(r.p99_us)},
        {"p99.9", number(r.p999_us)}, {"mean", number(r.mean_us)}, {"max", number(r.max_us)},
    };
    e["cpu"] = {
        {"source", r.cpu_source},
        {"user_s", number(r.user_s)},
        {"sys_s", number(r.sys_s)},
        {"us_per_op", number(r.cpu_us_per_op())},
        {"voluntary_csw", r.voluntary_csw},
        {"involuntary_csw", r.involuntary_csw},
        {"csw_per_op", number(r.csw_per_op())},
    };
    if (r.round_iops.size() > 1) {
      e["round_iops"] = numbers(r.round_iops);
      e["round_cpu_us_per_op"] = numbers(r.round_cpu_per_op);
      std::vector<double> ratios = PairedRatios(r, base);
      if (!ratios.empty()) {
        e["round_iops_vs_kaio"] = numbers(ratios);
        e["median_round_iops_vs_kaio"] = number(Median(ratios));
      }
    }
    e["io_errors"] = r.io_errors;
    if (!r.first_io_error.empty()) e["first_io_error"] = r.first_io_error;
    e["short_ios"] = r.short_ios;
    if (base != nullptr && r.ok && r.ops > 0) {
      e["vs_kaio"] = {
          {"iops", number(r.iops() / base->iops())},
          {"cpu_per_op", number(base->cpu_us_per_op() > 0 ? r.cpu_us_per_op() / base->cpu_us_per_op() : 0)},
      };
    }
    if (!r.counters.empty()) {
      Json counters = Json::object();
      for (const auto& [name, value] : r.counters) counters[name] = number(value);
      e["counters"] = std::move(counters);
    }
    engines.push_back(std::move(e));
  }
  doc["engines"] = std::move(engines);
  // Invalid UTF-8 (a file name, an error text) is replaced, not thrown on.
  return doc.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

}  // namespace kaio_bench
