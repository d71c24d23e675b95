#!/usr/bin/env bash
# glibc's POSIX AIO against kaio's, in one run, on the same fio --ioengine=posixaio workloads (and
# three of tools/posix_sigbench.cc, a signal per request, which fio does not do): each
# workload runs with and without LD_PRELOAD=libkaio_posix.so (alternating which goes first, repeated),
# and the script prints a Markdown table of medians: IOPS, mean and p99 completion latency, and the
# CPU time the whole process (every thread: fio's, glibc's helpers, kaio's engine) spent per request.
#
#   scripts/fio_posixaio_compare.sh                      # builds //api:kaio_posix with --config=opt
#   scripts/fio_posixaio_compare.sh --runtime=5 --repeat=5 --size=256m --dir=/mnt/scratch
#   scripts/fio_posixaio_compare.sh --so=path/to/libkaio_posix.so
#   scripts/fio_posixaio_compare.sh --baseline-env=KAIO_INLINE_SUBMIT=0   # kaio against kaio with that
#                                   # variable set, instead of against glibc (the "glibc" columns)
#   scripts/fio_posixaio_compare.sh --baseline-so=/tmp/old/libkaio_posix.so   # kaio against another
#                                   # build of it (the "glibc" columns), e.g. before and after a change
# Environment: KAIO_BAZEL_OUTPUT_BASE (a --output_base for the build), KAIO_FIO_WORKLOADS (names to run,
# space-separated, from the list below). Needs fio and python3.
set -euo pipefail
cd "$(dirname "$0")/.."

runtime=10 repeat=3 size=512m dir=${TMPDIR:-/tmp}/kaio_fio_compare so="" baseline_env="" baseline_so=""
for arg in "$@"; do
  case $arg in
    --runtime=*) runtime=${arg#*=} ;;
    --repeat=*) repeat=${arg#*=} ;;
    --size=*) size=${arg#*=} ;;
    --dir=*) dir=${arg#*=} ;;
    --so=*) so=${arg#*=} ;;
    --baseline-env=*) baseline_env=${arg#*=} ;;
    --baseline-so=*) baseline_so=${arg#*=} ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
command -v fio > /dev/null || { echo "fio is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
command -v python3 > /dev/null || { echo "python3 is needed to read fio's JSON" >&2; exit 1; }

if [ -z "$so" ]; then
  bazel_cmd=(bazel)
  [ -n "${KAIO_BAZEL_OUTPUT_BASE:-}" ] && bazel_cmd+=(--output_base="$KAIO_BAZEL_OUTPUT_BASE")
  "${bazel_cmd[@]}" build --config=opt //api:kaio_posix >&2
  so="$("${bazel_cmd[@]}" info --config=opt bazel-bin 2> /dev/null)/api/libkaio_posix.so"
fi
[ -f "$so" ] || { echo "no shared object at $so" >&2; exit 1; }
so=$(realpath "$so")
if [ -n "$baseline_so" ]; then
  [ -f "$baseline_so" ] || { echo "no shared object at $baseline_so" >&2; exit 1; }
  baseline_so=$(realpath "$baseline_so")
fi
mkdir -p "$dir"
file="$dir/fio_posixaio.dat"
out="$dir/results"
rm -rf "$out"
mkdir -p "$out"

# name | fio arguments. 4 KiB random I/O unless said otherwise.
workloads=(
  "randread_direct_qd1|--rw=randread --direct=1 --iodepth=1"
  "randread_direct_qd64|--rw=randread --direct=1 --iodepth=64"
  "randwrite_direct_qd64|--rw=randwrite --direct=1 --iodepth=64"
  "randread_cached_qd64|--rw=randread --direct=0 --iodepth=64 --invalidate=0"
  "randread_cached_qd1|--rw=randread --direct=0 --iodepth=1 --invalidate=0"
  "randwrite_buffered_qd64|--rw=randwrite --direct=0 --iodepth=64"
  # Not fio: tools/posix_sigbench.cc, small buffered requests each announced by its own signal
  # (SIGEV_SIGNAL, taken by a handler while the program sleeps in sigsuspend).
  "sig_randwrite_buffered_qd1|sigbench --rw=randwrite --iodepth=1"
  "sig_randwrite_buffered_qd16|sigbench --rw=randwrite --iodepth=16"
  "sig_randread_cached_qd16|sigbench --rw=randread --iodepth=16"
)
if [ -n "${KAIO_FIO_WORKLOADS:-}" ]; then
  selected=()
  for w in "${workloads[@]}"; do
    for name in $KAIO_FIO_WORKLOADS; do [ "${w%%|*}" = "$name" ] && selected+=("$w"); done
  done
  workloads=("${selected[@]}")
fi

sigbench=""
for w in "${workloads[@]}"; do
  if [[ ${w#*|} == sigbench* ]] && [ -z "$sigbench" ]; then
    command -v c++ > /dev/null || { echo "c++ is needed to build tools/posix_sigbench.cc" >&2; exit 1; }
    sigbench="$dir/posix_sigbench"
    c++ -O2 -std=c++17 -o "$sigbench" tools/posix_sigbench.cc
  fi
done

# Lay the file out once, so every run reads and overwrites allocated blocks.
fio --name=layout --filename="$file" --size="$size" --rw=write --bs=1m --ioengine=psync --end_fsync=1 \
  --output=/dev/null

run_one() {  # run_one <impl> <name> <args> <rep>
  local impl=$1 name=$2 args=$3 rep=$4
  local json="$out/$name.$impl.$rep.json" preload=""
  local env_args=()
  [ "$impl" = kaio ] && preload=$so
  if [ "$impl" = glibc ] && [ -n "$baseline_env" ]; then preload=$so env_args=("$baseline_env"); fi
  if [ "$impl" = glibc ] && [ -n "$baseline_so" ]; then preload=$baseline_so; fi
  local TIMEFORMAT='%U %S'
  if [[ $args == sigbench* ]]; then
    # shellcheck disable=SC2086
    { time env "${env_args[@]}" LD_PRELOAD="$preload" "$sigbench" --file="$file" --size="$size" --runtime="$runtime" \
        --ramp=1 --json="$json" ${args#sigbench} > /dev/null; } 2> "$out/$name.$impl.$rep.cpu"
    return
  fi
  # shellcheck disable=SC2086
  { time env "${env_args[@]}" LD_PRELOAD="$preload" fio --thread --name="$name" --filename="$file" --size="$size" --bs=4k \
      --ioengine=posixaio --time_based --runtime="$runtime" --ramp_time=1 --norandommap --randrepeat=0 \
      --output-format=json --output="$json" $args > /dev/null 2>&1; } 2> "$out/$name.$impl.$rep.cpu"
}

echo "fio $(fio --version) posixaio, $(nproc) CPUs, $(uname -r), file $size on $(df -P "$dir" | awk 'NR==2 {print $1}'),"
echo "runtime ${runtime}s x $repeat repetitions per implementation; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "kaio: $so"
[ -z "$baseline_env" ] || echo "baseline (the glibc columns): kaio with $baseline_env"
[ -z "$baseline_so" ] || echo "baseline (the glibc columns): $baseline_so"
echo
for w in "${workloads[@]}"; do
  name=${w%%|*}
  args=${w#*|}
  for rep in $(seq 1 "$repeat"); do
    if [ $((rep % 2)) -eq 1 ]; then order="glibc kaio"; else order="kaio glibc"; fi
    for impl in $order; do run_one "$impl" "$name" "$args" "$rep"; done
  done
done

python3 - "$out" "$repeat" "${workloads[@]}" <<'PY'
import json, statistics, sys
out, repeat, workloads = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

def load(name, impl, rep):
    with open(f"{out}/{name}.{impl}.{rep}.json") as f:
        job = json.load(f)["jobs"][0]
    with open(f"{out}/{name}.{impl}.{rep}.cpu") as f:
        user, system = (float(x) for x in f.read().split()[-2:])
    if job["error"] != 0:
        raise SystemExit(f"{name} {impl} run {rep}: fio error {job['error']}")
    ios = iops = 0.0
    clat_mean = clat_p99 = 0.0
    for ddir in ("read", "write"):
        d = job[ddir]
        if d["total_ios"] == 0:
            continue
        ios += d["total_ios"]
        iops += d["iops"]
        clat_mean = max(clat_mean, d["clat_ns"]["mean"] / 1000)
        clat_p99 = max(clat_p99, d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000)
    # CPU of the whole process over the whole run (ramp included) per request of the measured part,
    # scaled by the measured share of the run: an estimate, the same for both implementations.
    runtime_s = job["job_runtime"] / 1000
    total_s = runtime_s + 1.0  # --ramp_time=1
    cpu_per_io = (user + system) * (runtime_s / total_s) / ios * 1e6 if ios else 0
    return iops, clat_mean, clat_p99, cpu_per_io, (user + system) / total_s * 100

print("| workload | glibc IOPS | kaio IOPS | kaio / glibc | glibc mean / p99 clat (us) | kaio mean / p99 clat (us) | glibc CPU per I/O (us) | kaio CPU per I/O (us) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for w in workloads:
    name = w.split("|")[0]
    res = {}
    for impl in ("glibc", "kaio"):
        runs = [load(name, impl, r) for r in range(1, repeat + 1)]
        res[impl] = [statistics.median(x) for x in zip(*runs)]
    g, k = res["glibc"], res["kaio"]
    print(f"| {name} | {g[0]:,.0f} | {k[0]:,.0f} | {k[0] / g[0]:.2f}x | {g[1]:,.0f} / {g[2]:,.0f} | "
          f"{k[1]:,.0f} / {k[2]:,.0f} | {g[3]:.1f} | {k[3]:.1f} |")
PY
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg); raw fio JSON in $out"
