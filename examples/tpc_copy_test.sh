#!/usr/bin/env bash
# Runs examples/tpc_copy on generated files and checks its output independently of its own verification:
# cmp and sha256sum against the source. Cases: buffered and O_DIRECT (skipped where the filesystem refuses
# O_DIRECT), sizes that are not a multiple of the chunk or of the block, empty and one-byte files, more
# loops than chunks, a missing source, bad usage, and an interrupt (SIGINT) in the middle of a copy.
#   tpc_copy_test.sh path/to/tpc_copy
set -euo pipefail
bin=$1
case $bin in /*) ;; *) bin=$PWD/$bin ;; esac
tmp=$(mktemp -d "${TEST_TMPDIR:-${TMPDIR:-/tmp}}/tpc_copy_test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# check_copy <name> <size> <tpc_copy flags...>: copy a random file of <size> bytes and compare.
check_copy() {
  local name=$1 size=$2
  shift 2
  head -c "$size" /dev/urandom >"$tmp/$name.src"
  echo "== $name: $size bytes, tpc_copy $*"
  "$bin" "$@" "$tmp/$name.src" "$tmp/$name.dst" 2>"$tmp/$name.log" || { cat "$tmp/$name.log" >&2; fail "$name: exit $?"; }
  cat "$tmp/$name.log"
  cmp "$tmp/$name.src" "$tmp/$name.dst" || fail "$name: the copy differs (cmp)"
  local a b
  a=$(sha256sum <"$tmp/$name.src") b=$(sha256sum <"$tmp/$name.dst")
  [ "$a" = "$b" ] || fail "$name: sha256 $a vs $b"
  if [ "$size" -gt 0 ]; then grep -q ', verified;' "$tmp/$name.log" || fail "$name: tpc_copy did not report its verification"; fi
  rm -f "$tmp/$name.src" "$tmp/$name.dst"
}

mib=$((1 << 20))
check_copy buffered $((24 * mib + 4097)) --threads=2 --chunk=1M --depth=8
check_copy one_loop $((3 * mib + 1)) --threads=1 --chunk=256K --depth=4
check_copy more_loops_than_chunks $((2 * mib)) --threads=8 --chunk=1M
check_copy empty 0 --threads=2
check_copy one_byte 1 --threads=2
check_copy default_flags $((5 * mib + 12345))

if dd if=/dev/zero of="$tmp/probe" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
  check_copy direct $((24 * mib + 4097)) --direct --threads=2 --chunk=1M --depth=8
  check_copy direct_aligned $((8 * mib)) --direct --chunk=64K --depth=16
  check_copy direct_small 100 --direct
else
  echo "== O_DIRECT: not supported under $tmp; skipping the --direct cases"
fi

echo "== missing source"
status=0
"$bin" "$tmp/no_such_file" "$tmp/out" 2>"$tmp/missing.log" || status=$?
cat "$tmp/missing.log"
[ "$status" -eq 1 ] || fail "missing source: exit $status, expected 1"
grep -q 'cannot open .*no_such_file: No such file or directory' "$tmp/missing.log" || fail "missing source: message"

echo "== bad usage"
status=0
"$bin" --chunk=1000 a b 2>"$tmp/usage.log" || status=$?
[ "$status" -eq 2 ] || fail "bad usage: exit $status, expected 2"
grep -q '^usage: tpc_copy' "$tmp/usage.log" || fail "bad usage: no usage text"

# SIGINT after loop 0 has copied 3 chunks (a test hook: the loop raises it, the main thread takes it from
# its signalfd like any other SIGINT). Every loop must stop, collect what it has out, and exit 130.
echo "== interrupted"
head -c $((16 * mib)) /dev/urandom >"$tmp/int.src"
status=0
"$bin" --threads=2 --chunk=64K --depth=4 --progress --test_interrupt_after=3 "$tmp/int.src" "$tmp/int.dst" \
  2>"$tmp/int.log" || status=$?
cat "$tmp/int.log"
[ "$status" -eq 130 ] || fail "interrupted: exit $status, expected 130"
grep -q 'Interrupt: stopping' "$tmp/int.log" || fail "interrupted: no stop message"
grep -q 'stopped after' "$tmp/int.log" || fail "interrupted: no summary"

echo "PASS"
