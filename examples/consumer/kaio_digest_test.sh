#!/usr/bin/env bash
# kaio_digest gives equal digests for equal files, a different one after a one-byte change, and exit 1
# for a missing file.
set -euo pipefail
bin=$1
tmp=$(mktemp -d "${TEST_TMPDIR:-/tmp}/kaio_digest_test.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
# No byte of a is an x, so writing one into c below always changes it.
head -c $((3 * 1024 * 1024 + 17)) /dev/urandom | tr x y >"$tmp/a"
cp "$tmp/a" "$tmp/b"
cp "$tmp/a" "$tmp/c"
printf 'x' | dd of="$tmp/c" bs=1 seek=1000000 count=1 conv=notrunc status=none
out=$("$bin" "$tmp/a" "$tmp/b" "$tmp/c")
echo "$out"
a=$(echo "$out" | sed -n 1p | cut -d' ' -f1)
b=$(echo "$out" | sed -n 2p | cut -d' ' -f1)
c=$(echo "$out" | sed -n 3p | cut -d' ' -f1)
[ "$a" = "$b" ] || { echo "FAIL: equal files, digests $a and $b"; exit 1; }
[ "$a" != "$c" ] || { echo "FAIL: a changed byte left the digest $a"; exit 1; }
status=0
"$bin" "$tmp/missing" 2>/dev/null || status=$?
[ "$status" -eq 1 ] || { echo "FAIL: missing file: exit $status"; exit 1; }
echo PASS
