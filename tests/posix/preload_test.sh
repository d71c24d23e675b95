#!/usr/bin/env bash
# The preloadable shared object in unmodified programs: preload_client (built against glibc's <aio.h>,
# in plain and _FILE_OFFSET_BITS=64 flavours, so both aio_read and aio_read64 names are used) passes
# under glibc and under LD_PRELOAD=libkaio_posix.so; kaio really served the calls; the object exports
# only the AIO names; and a malformed KAIO_* variable gives a clear message and EINVAL.
# Usage: preload_test.sh <libkaio_posix.so> <preload_client> <preload_client64>
set -euo pipefail
so=$(realpath "$1")
clients=("$2" "$3")
tmp=${TEST_TMPDIR:-$(mktemp -d)}
fail() { echo "FAIL: $*" >&2; exit 1; }

# Under a sanitizer config the object needs its runtime loaded first.
runtime=$(ldd "$so" | grep -o '/[^ ]*lib[a-z]*san\.so[^ ]*' | head -1 || true)
preload="${runtime:+$runtime:}$so"
export ASAN_OPTIONS=${ASAN_OPTIONS:-}:detect_leaks=0
echo "LD_PRELOAD=$preload"

# 1. Exports: glibc's 16 AIO names and kaio's own, nothing else (Abseil and kaio stay inside).
expected="aio_cancel aio_cancel64 aio_error aio_error64 aio_fsync aio_fsync64 aio_read aio_read64
aio_return aio_return64 aio_suspend aio_suspend64 aio_write aio_write64 lio_listio lio_listio64
kaio_aio_cancel kaio_aio_error kaio_aio_fsync kaio_aio_read kaio_aio_return kaio_aio_suspend
kaio_aio_write kaio_lio_listio"
exported=$(nm -D --defined-only "$so" | awk '$2 ~ /^[A-Z]$/ && $3 !~ /^__tsan_/ {print $3}' | sort)
want=$(echo $expected | tr ' ' '\n' | sort)
if [ "$exported" != "$want" ]; then
  diff <(echo "$want") <(echo "$exported") >&2 || true
  fail "libkaio_posix.so exports other symbols than the AIO names (diff: expected < > exported)"
fi
echo "exports: ok ($(echo "$exported" | wc -l) symbols)"

for client in "${clients[@]}"; do
  name=$(basename "$client")
  # 2. glibc alone.
  "$client" "$tmp/$name.glibc" > "$tmp/out" 2>&1 || { cat "$tmp/out" >&2; fail "$name fails under glibc"; }
  # 3. kaio, preloaded: the client passes, and kaio says it served it.
  if ! KAIO_POSIX_VERBOSE=1 KAIO_POSIX_STATS=1 LD_PRELOAD=$preload "$client" "$tmp/$name.kaio" > "$tmp/out" 2>&1; then
    cat "$tmp/out" >&2
    fail "$name fails with kaio preloaded"
  fi
  cat "$tmp/out"
  grep -q "kaio: POSIX AIO on kaio" "$tmp/out" || fail "$name: kaio's start-up line is missing: was the object loaded?"
  requests=$(sed -n 's/.*: \([0-9]*\) POSIX AIO requests.*/\1/p' "$tmp/out")
  [ "${requests:-0}" -ge 6 ] || fail "$name: kaio served ${requests:-no} requests, expected at least 6"
  echo "$name: ok under glibc and under kaio ($requests requests served by kaio)"

  # 4. A malformed option: a message naming the variable, and every submission fails with EINVAL.
  if KAIO_QUEUE_DEPTH=12x LD_PRELOAD=$preload "$client" "$tmp/$name.bad" > "$tmp/out" 2>&1; then
    cat "$tmp/out" >&2
    fail "$name: succeeded with KAIO_QUEUE_DEPTH=12x"
  fi
  grep -q "KAIO_QUEUE_DEPTH='12x' is not valid: expected an integer from 1 to 65536" "$tmp/out" ||
    { cat "$tmp/out" >&2; fail "$name: no clear message for KAIO_QUEUE_DEPTH=12x"; }
  grep -q "aio_write: Invalid argument" "$tmp/out" ||
    { cat "$tmp/out" >&2; fail "$name: aio_write did not fail with EINVAL"; }
  echo "$name: malformed KAIO_QUEUE_DEPTH reported and refused"
done
echo "PASS"
