#!/usr/bin/env bash
# kaio's full check: scripts/setup.sh, then `bazel test //...` in the default configuration, under
# ThreadSanitizer and under AddressSanitizer. Every phase runs even if an earlier test phase failed; the
# script prints each phase's time and exits non-zero if any phase failed.
#   scripts/test.sh                     # everything
#   scripts/test.sh //tests:smoke_test  # other target patterns (default //...)
#   KAIO_TEST_CONFIGS="default ubsan" scripts/test.sh   # other configurations (default, tsan, asan, ubsan)
set -uo pipefail
cd "$(dirname "$0")/.."

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(//...)
read -r -a configs <<<"${KAIO_TEST_CONFIGS:-default tsan asan}"
# Readable logs: no progress bar or cursor movement, one line per finished test, failing tests' logs inline.
bazel_flags=(--curses=no --color=no --noshow_progress --show_timestamps --keep_going)

names=() times=() results=()
failed=0
run_phase() {  # run_phase <name> <command...>
  local name=$1 start end status
  shift
  printf '\n===== %s: %s\n' "$name" "$*"
  start=$(date +%s)
  "$@"
  status=$?
  end=$(date +%s)
  names+=("$name") times+=($((end - start)))
  if [ $status -eq 0 ]; then results+=(ok); else results+=("FAILED (exit $status)"); failed=1; fi
  printf '===== %s: %s in %ss\n' "$name" "${results[-1]}" "$((end - start))"
  return $status
}
summary() {
  printf '\n===== summary\n'
  local i total=0
  for i in "${!names[@]}"; do
    printf '  %-22s %6ss  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
    total=$((total + times[i]))
  done
  printf '  %-22s %6ss\n' total "$total"
}

if ! run_phase setup scripts/setup.sh; then
  summary
  exit 1
fi
# bazel-* convenience links are rewritten by every build, but a build with another --output_base (a
# helper's, an older fuzz_smoke.sh) leaves them pointing into a foreign execroot, and `//...` then
# descends into it and fails. They are only conveniences: drop them, the first build makes them again.
find . -maxdepth 1 -name 'bazel-*' -type l -delete
for config in "${configs[@]}"; do
  case $config in
    default) run_phase "test (default)" bazel test "${bazel_flags[@]}" -- "${targets[@]}" ;;
    tsan | asan | ubsan | opt)  # the default phase builds every target; these build only the tests
      run_phase "test (--config=$config)" bazel test "${bazel_flags[@]}" --config="$config" --build_tests_only \
        -- "${targets[@]}" ;;
    *) echo "unknown configuration '$config' in KAIO_TEST_CONFIGS" >&2; failed=1 ;;
  esac
done
summary
exit $failed
