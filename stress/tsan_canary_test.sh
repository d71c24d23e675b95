#!/usr/bin/env bash
# Runs the racy canary (stress/tsan_canary_race.cc) and checks that ThreadSanitizer reports its planted
# race. Outside --config=tsan the canary reports SKIP and this test passes without checking anything.
set -uo pipefail
canary=${1:?usage: tsan_canary_test.sh <path to tsan_canary_race>}

output=$("$canary" 2>&1)
status=$?
printf '%s\n' "$output"
echo "--- canary exit status: $status"

fail() { echo "FAIL: $*"; exit 1; }

if grep -q '^KAIO_TSAN_CANARY: SKIP' <<<"$output"; then
  [ "$status" -eq 0 ] || fail "the skipping canary exited with $status"
  echo "PASS (skipped): not a ThreadSanitizer build"
  exit 0
fi
grep -q '^KAIO_TSAN_CANARY: ERROR' <<<"$output" && fail "the canary could not run the race (see above)"
[ "$status" -ne 0 ] || fail "the racy canary exited 0: TSan did not flag the race"
grep -q 'WARNING: ThreadSanitizer: data race' <<<"$output" || fail "no 'WARNING: ThreadSanitizer: data race' in the output"
grep -q 'kaio_canary::CompleteOnReaper' <<<"$output" && grep -q 'kaio_canary::CancelOnSubmitter' <<<"$output" ||
  fail "TSan reported something, but not the planted race between CompleteOnReaper and CancelOnSubmitter"
echo "PASS: ThreadSanitizer caught the planted race"
