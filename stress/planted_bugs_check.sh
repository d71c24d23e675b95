#!/usr/bin/env bash
# Proves the stress suite would catch the bugs it exists for: builds kaio_stress with one bug planted
# at a time (core/planted_bug.h, --define=kaio_planted_bug=NAME), runs it, and passes only if every
# broken build fails, with the diagnosis that bug should get. A clean build must pass the same run.
#   stress/planted_bugs_check.sh [extra bazel flags...]
# Run from the workspace root (CI does, after scripts/test.sh). It builds in the default
# configuration; the planted builds recompile only kaio's own code.
set -uo pipefail
cd "$(dirname "$0")/.."
bazel_flags=(--curses=no --color=no --noshow_progress "$@")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# O_DIRECT, reads and writes verified block by block, half the requesters inline (core/planted_bug.h
# plants are on paths both kinds use), short waits so a lost completion fails fast.
run_flags=(--threads=3 --ops=6000 --inline_io=50 --seed=11 --dir="$work" --wait_timeout_ms=5000 --watchdog_ms=20000)

# name | what the failure output must contain
checks=(
  "none|^kaio_stress: PASS "
  "double_completion|already-answered request|more completions delivered than requests accepted"
  "lost_completion|no completion within|WATCHDOG"
  "leaked_slot|leaked in state|slots leaked"
  "misdirected_write|returned bad data|stale or foreign version|lost write|final pass"
)
failed=0
for check in "${checks[@]}"; do
  name=${check%%|*}
  want=${check#*|}
  define=()
  [ "$name" = none ] || define=(--define=kaio_planted_bug="$name")
  echo "===== planted bug: $name"
  if ! bazel build "${bazel_flags[@]}" "${define[@]}" //stress:kaio_stress >"$work/build.log" 2>&1; then
    cat "$work/build.log"
    echo "FAIL: the build with planted bug '$name' did not build"
    failed=1
    continue
  fi
  cp "$(bazel info "${bazel_flags[@]}" "${define[@]}" bazel-bin 2>/dev/null)/stress/kaio_stress" "$work/kaio_stress"
  start=$(date +%s)
  "$work/kaio_stress" "${run_flags[@]}" >"$work/run.log" 2>&1
  status=$?
  took=$(($(date +%s) - start))
  summary=$(grep -E '^kaio_stress: (PASS|FAIL)' "$work/run.log" | tail -n 1)
  if [ "$name" = none ]; then
    if [ $status -eq 0 ] && grep -qE "$want" "$work/run.log"; then
      echo "ok: the clean build passes ($took s): $summary"
    else
      tail -n 30 "$work/run.log"
      echo "FAIL: the clean build did not pass (exit $status)"
      failed=1
    fi
    continue
  fi
  if [ $status -ne 0 ] && grep -qE "$want" "$work/run.log"; then
    echo "ok: caught (exit $status, $took s): $(grep -m1 -E "$want" "$work/run.log" | cut -c1-200)"
    echo "    $summary"
  else
    tail -n 30 "$work/run.log"
    echo "FAIL: kaio_stress did not catch planted bug '$name' (exit $status; wanted /$want/)"
    failed=1
  fi
done
# Leave the default build as it was for whoever builds next.
bazel build "${bazel_flags[@]}" "$@" //stress:kaio_stress >/dev/null 2>&1 || true
exit $failed
