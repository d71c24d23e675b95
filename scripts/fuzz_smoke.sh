#!/usr/bin/env bash
# A short libFuzzer run of //fuzz:api_fuzzer (random kaio API call sequences, faults injected through
# the syscall seam) with clang, ASan and UBSan, for CI:
#   scripts/fuzz_smoke.sh              # 60 s
#   KAIO_FUZZ_SECONDS=600 scripts/fuzz_smoke.sh
# Builds in its own Bazel output base (clang instead of the default gcc; see fuzz/libfuzzer.bazelrc).
# New corpus entries go to a scratch directory; crashes, leaks and timeouts are written to
# $KAIO_FUZZ_ARTIFACTS (default /tmp/kaio-fuzz-artifacts) and fail the script. Replay one with
#   bazel-bin/fuzz/api_fuzzer <artifact>   (or the standalone build: bazel run //fuzz:api_fuzzer -- <artifact>)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${KAIO_FUZZ_SECONDS:-60}
output_base=${KAIO_FUZZ_OUTPUT_BASE:-$HOME/.cache/bazel-kaio-fuzz}
artifacts=${KAIO_FUZZ_ARTIFACTS:-/tmp/kaio-fuzz-artifacts}
bazel_startup=(--output_base="$output_base" --bazelrc=fuzz/libfuzzer.bazelrc)

# The fuzz output base has its own Bazel server: stop it at the end (as .ci/run stops the main one),
# unless KAIO_FUZZ_KEEP_SERVER=1 (repeated local runs start faster).
work=
cleanup() {
  [ -z "$work" ] || rm -rf "$work"
  [ "${KAIO_FUZZ_KEEP_SERVER:-0}" = 1 ] || bazel "${bazel_startup[@]}" shutdown >/dev/null 2>&1 || true
}
trap cleanup EXIT

command -v clang >/dev/null || { echo "fuzz_smoke: clang is missing (scripts/setup.sh installs it)" >&2; exit 1; }
# --symlink_prefix=/: no bazel-* convenience links. This build has its own output base; links into it
# left in the workspace made the next `bazel test //...` there (a second .ci/run in one checkout)
# descend into them and fail on the foreign execroot's packages.
bazel "${bazel_startup[@]}" build --curses=no --color=no --noshow_progress --config=libfuzzer --symlink_prefix=/ \
  //fuzz:api_fuzzer
binary=$(bazel "${bazel_startup[@]}" info --config=libfuzzer bazel-bin 2>/dev/null)/fuzz/api_fuzzer

work=$(mktemp -d /tmp/kaio-fuzz.XXXXXX)
mkdir -p "$work/corpus" "$artifacts"
cp fuzz/corpus/* "$work/corpus/"
echo "fuzz_smoke: $binary for ${seconds}s, artifacts in $artifacts"
# -timeout: an input that runs this long is a hang (every wait in the target is bounded far below it).
# -rss_limit_mb: kaio's slab and the services persist across inputs; growth past this is a leak.
set +e
TEST_TMPDIR=$work "$binary" -max_total_time="$seconds" -timeout=60 -rss_limit_mb=2048 -max_len=2048 \
  -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/corpus" >"$work/log" 2>&1
status=$?
set -e
# libFuzzer's output, thinned: no progress lines and no io_setup EAGAIN notices (injected faults; counted
# instead), leaving any report and the final stats.
echo "fuzz_smoke: $(grep -c '^kaio: io_setup(' "$work/log" || true) injected io_setup failures reported by kaio"
grep -v -E '^#[0-9]+.*(NEW|REDUCE|pulse)|^kaio: io_setup\(' "$work/log" | tail -n 60
if [ "$status" -ne 0 ]; then
  echo "fuzz_smoke: FAILED (exit $status); inputs in $artifacts" >&2
  exit "$status"
fi
echo "fuzz_smoke: PASS"
