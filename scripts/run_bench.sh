#!/usr/bin/env bash
# Builds kaio_bench optimized and runs it; arguments go to the benchmark:
#   scripts/run_bench.sh --help
# Setup and Bazel messages go to stderr, so stdout carries only the benchmark's own output.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >&2
exec bazel run --curses=no --color=no --noshow_progress -c opt //tools:kaio_bench -- "$@"
