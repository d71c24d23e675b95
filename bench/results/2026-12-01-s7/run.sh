#!/usr/bin/env bash
# Session 7's before/after, one run, builds side by side (old = 70db2bb, the session's start; new =
# the session's end), each built with `bazel build -c opt //tools:kaio_bench //bench:hot_paths
# //api:libkaio_posix.so` and copied to /tmp/old and /tmp/newf. Output: the .txt files beside this.
set -u
out=$(dirname "$0")
k() { "$1"/kaio_bench --progress=0 --runtime=3s --ramp=0.5s --rounds=1 "${@:2}" 2>&1 | sed -n '/^engine /,/^$/p;/^kaio counters/p;/^kaio-threads counters/p'; }
run() {  # name, then kaio_bench flags
  local name=$1; shift
  for rep in 1 2; do for v in old newf; do echo "== $name $v (rep $rep)"; k /tmp/$v "$@"; done; done > "$out/$name.txt"
}
run pagecache_qd1 --rw=randread --bs=4k --direct=0 --cache=warm --size=512m --filename=/tmp/kb.512m --iodepth=1 --engines=kaio,kaio-threads,libaio,fio-psync
run pagecache_qd32 --rw=randread --bs=4k --direct=0 --cache=warm --size=512m --filename=/tmp/kb.512m --iodepth=32 --engines=kaio,kaio-threads,libaio,io_uring
run direct_qd32 --rw=randread --bs=4k --direct=1 --size=512m --filename=/tmp/kb.512m --iodepth=32 --engines=kaio,kaio-threads,libaio
run direct_qd128 --rw=randread --bs=4k --direct=1 --size=512m --filename=/tmp/kb.512m --iodepth=128 --engines=kaio,libaio,fio
run buffered_randwrite_qd32 --rw=randwrite --bs=4k --direct=0 --size=256m --filename=/tmp/kb.dat --iodepth=32 --engines=kaio,kaio-threads,libaio,posixaio,threadpool,io_uring
for v in old newf; do echo "== hot_paths $v"; /tmp/$v/hot_paths --benchmark_repetitions=2 --benchmark_report_aggregates_only=true 2>&1 | grep -E "median"; done > "$out/hot_paths.txt"
cd "$(dirname "$0")/../../.."
scripts/fio_posixaio_compare.sh --so=/tmp/newf/libkaio_posix.so --runtime=3 --repeat=2 --size=256m > "$out/fio_posixaio_new_vs_glibc.txt" 2>&1
scripts/fio_posixaio_compare.sh --so=/tmp/newf/libkaio_posix.so --baseline-so=/tmp/old/libkaio_posix.so --runtime=3 --repeat=2 --size=256m > "$out/fio_posixaio_new_vs_old.txt" 2>&1
echo finished
