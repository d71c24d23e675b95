#!/usr/bin/env bash
# Measures the performance goals of issue 8 with kaio_bench, each as one run in which every engine
# (and fio, the outside reference) drives the same workload, so the ratios come from one run:
#   1. device-bound: 4 KiB O_DIRECT random reads of a 1 GiB file at iodepth 32 and 128
#   2. CPU-bound: 4 KiB buffered random reads that hit the page cache, at iodepth 32 and 1
# Output: the tables on stdout, and JSON per run in $OUT (default ./bench-results).
#
#   tools/bench_goals.sh                      # builds with `bazel`, keeps the 1 GiB file in $DIR
#   BAZEL_STARTUP=--output_base=/tmp/ob DIR=/data NICE="nice -n -20" tools/bench_goals.sh
#
# Runs take about 5 minutes in all (plus writing the 1 GiB file once). Keep the machine otherwise idle: with 2 CPUs, a concurrent build
# changes every figure.
set -euo pipefail
cd "$(dirname "$0")/.."
BAZEL=${BAZEL:-bazel}
BAZEL_STARTUP=${BAZEL_STARTUP:-}
DIR=${DIR:-$PWD}
OUT=${OUT:-$PWD/bench-results}
RUNTIME=${RUNTIME:-3s}
RAMP=${RAMP:-0.5s}
ROUNDS=${ROUNDS:-3}  # interleaved rounds per workload, merged per engine
# e.g. NICE="nice -n -20" (as root) to keep a concurrent build from taking the CPUs mid-run.
NICE=${NICE:-}
mkdir -p "$OUT"
# shellcheck disable=SC2086
$BAZEL $BAZEL_STARTUP build -c opt //tools:kaio_bench >&2
# shellcheck disable=SC2086
BIN="$($BAZEL $BAZEL_STARTUP info -c opt bazel-bin 2>/dev/null)/tools/kaio_bench"
FILE="$DIR/kaio_bench.1g"

run_once() {
  local name=$1
  shift
  echo "== $name: kaio_bench $*"
  # shellcheck disable=SC2086
  $NICE "$BIN" --progress=0 --json-file="$OUT/$name.json" "$@"
  echo
}

DEVICE=(--rw=randread --bs=4k --direct=1 --size=1g --filename="$FILE" --runtime="$RUNTIME" --ramp="$RAMP"
        --rounds="$ROUNDS" --engines=kaio,kaio-threads,libaio,posixaio,threadpool,io_uring,fio)
run_once device-qd32 "${DEVICE[@]}" --iodepth=32
run_once device-qd128 "${DEVICE[@]}" --iodepth=128

CACHE=(--rw=randread --bs=4k --direct=0 --cache=warm --size=1g --filename="$FILE" --runtime="$RUNTIME" --ramp="$RAMP"
       --rounds="$ROUNDS" --engines=kaio,kaio-threads,libaio,posixaio,threadpool,io_uring,fio,fio-posixaio,fio-psync)
run_once pagecache-qd32 "${CACHE[@]}" --iodepth=32
run_once pagecache-qd1 "${CACHE[@]}" --iodepth=1
echo "JSON in $OUT; the test file $FILE is kept for the next run (delete it when done)."
