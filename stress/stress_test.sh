#!/usr/bin/env bash
# Runs kaio_stress with the given flags and passes only if it exits 0, prints its PASS summary line, and
# no sanitizer reported anything (a UBSan build that recovers, or a TSan report under exitcode=0, would
# otherwise pass silently).
#   stress_test.sh <path to kaio_stress> [kaio_stress flags...]
set -uo pipefail
binary=${1:?usage: stress_test.sh <kaio_stress> [flags...]}
shift
log=${TEST_TMPDIR:-/tmp}/kaio_stress.$$.log
"$binary" "$@" >"$log" 2>&1
status=$?
cat "$log"
echo "--- kaio_stress exit status: $status"
fail() { echo "FAIL: $*"; exit 1; }
[ "$status" -eq 0 ] || fail "kaio_stress exited with $status"
grep -q '^kaio_stress: PASS ' "$log" || fail "no PASS summary line"
if grep -nE 'WARNING: ThreadSanitizer|ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|UndefinedBehaviorSanitizer' "$log"; then
  fail "a sanitizer reported a problem (see above)"
fi
echo "PASS: $(grep '^kaio_stress: PASS ' "$log")"
