#!/usr/bin/env bash
# An unmodified real client: Debian's fio, --ioengine=posixaio, with LD_PRELOAD=libkaio_posix.so,
# writes and verifies (crc32c) at iodepth 1 and 64, O_DIRECT (kernel AIO) and buffered (kaio's
# blocking pool), and must report no error. KAIO_POSIX_STATS shows that kaio served the requests.
# Usage: fio_preload_test.sh <libkaio_posix.so> <stress/tsan_suppressions.txt>
set -euo pipefail
so=$(realpath "$1")
tmp=${TEST_TMPDIR:-$(mktemp -d)}
command -v fio > /dev/null || { echo "FAIL: fio is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
# Under a sanitizer config the object needs its runtime loaded first. fio itself is not instrumented,
# so ASan/TSan check kaio's code inside a real fio process.
runtime=$(ldd "$so" | grep -o '/[^ ]*lib[a-z]*san\.so[^ ]*' | head -1 || true)
preload="${runtime:+$runtime:}$so"
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
# fio 3.33's own races at exit (its helper thread against options_free and fio_sem_remove in the
# main thread): not kaio's, and named exactly. Any other report fails the run (exit code 66).
# The project's third-party entries (moodycamel's fence-ordered block reuse) are compiled into our own
# binaries, but TSan reads __tsan_default_suppressions from the executable, and fio is not ours, so
# they are passed here as a file too.
printf 'race:^options_free$\nrace:^fio_sem_remove$\n' > "$tmp/fio_tsan.supp"
cat "$2" >> "$tmp/fio_tsan.supp"
export TSAN_OPTIONS=${TSAN_OPTIONS:-}:suppressions=$tmp/fio_tsan.supp:exitcode=66

run() {  # run <name> <fio args...>
  local name=$1
  shift
  local out="$tmp/$name.out"
  echo "== $name: fio $*"
  # --thread: the job runs in fio's own process, so KAIO_POSIX_STATS prints at its exit.
  if ! KAIO_POSIX_STATS=1 LD_PRELOAD=$preload fio --thread --name="$name" --filename="$tmp/$name.dat" \
      --ioengine=posixaio --verify=crc32c --do_verify=1 --verify_fatal=1 --bs=4k "$@" > "$out" 2>&1; then
    cat "$out" >&2
    echo "FAIL: fio $name exited with an error" >&2
    exit 1
  fi
  grep -E "err= *0" "$out" > /dev/null || { cat "$out" >&2; echo "FAIL: $name: fio reports an error" >&2; exit 1; }
  if grep -Ei "verify.*(fail|bad|mismatch)|crc32c.*(wanted|got)" "$out" > /dev/null; then
    cat "$out" >&2
    echo "FAIL: $name: verify error" >&2
    exit 1
  fi
  local requests
  requests=$(sed -n 's/.*: \([0-9]*\) POSIX AIO requests.*/\1/p' "$out")
  [ "${requests:-0}" -gt 0 ] || { cat "$out" >&2; echo "FAIL: $name: kaio served no request: not preloaded?" >&2; exit 1; }
  grep -E "IOPS=|kaio:" "$out"
  rm -f "$tmp/$name.dat"
}

run direct_qd1 --direct=1 --iodepth=1 --rw=randwrite --size=16m
run direct_qd64 --direct=1 --iodepth=64 --rw=randwrite --size=32m
run buffered_qd1 --direct=0 --iodepth=1 --rw=randwrite --size=16m
run buffered_qd64 --direct=0 --iodepth=64 --rw=randwrite --size=32m
run direct_seq_qd64 --direct=1 --iodepth=64 --rw=write --bs=64k --size=32m
run direct_randrw_qd64 --direct=1 --iodepth=64 --rw=randrw --verify_backlog=64 --size=16m
echo "PASS"
