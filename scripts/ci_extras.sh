#!/usr/bin/env bash
# kaio as outside users meet it: the consumer workspace (examples/consumer: kaio through local_repository
# and kaio_deps()), the CMake build with its tests, and the installed package used through find_package(kaio)
# and pkg-config. The example program's own test (//examples:tpc_copy_test) runs with the main workspace's
# `bazel test //...`. Every phase runs even if an earlier one failed; prints each phase's time and exits
# non-zero if any failed. Needs scripts/setup.sh to have run (.ci/run runs it through scripts/test.sh).
#   scripts/ci_extras.sh                    # every phase
#   scripts/ci_extras.sh consumer cmake     # some: consumer, cmake, install
# Environment: KAIO_CMAKE_BUILD_DIR (default build), KAIO_CONSUMER_BAZEL_STARTUP (startup options for the
# consumer workspace's Bazel, e.g. --output_base=...), KAIO_JOBS (default: nproc).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

read -r -a phases <<<"${*:-consumer cmake install}"
build_dir=${KAIO_CMAKE_BUILD_DIR:-build}
case $build_dir in /*) ;; *) build_dir=$root/$build_dir ;; esac
jobs=${KAIO_JOBS:-$(nproc)}
read -r -a consumer_startup <<<"${KAIO_CONSUMER_BAZEL_STARTUP:-}"
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
  printf '\n===== summary (ci_extras)\n'
  local i total=0
  for i in "${!names[@]}"; do
    printf '  %-26s %6ss  %s\n' "${names[$i]}" "${times[$i]}" "${results[$i]}"
    total=$((total + times[i]))
  done
  printf '  %-26s %6ss\n' total "$total"
}

consumer_bazel() { (cd "$root/examples/consumer" && bazel "${consumer_startup[@]}" "$@"); }

# The consumer workspace: `cd examples/consumer && bazel test //...`, as its README line says.
consumer() {
  local status=0
  consumer_bazel test "${bazel_flags[@]}" //... || status=$?
  consumer_bazel shutdown >/dev/null 2>&1  # no daemon outlives the job
  return $status
}

# CMake from the same sources: configure (warnings are errors here, as in Bazel), build, ctest.
cmake_build() {
  cmake -S "$root" -B "$build_dir" -DKAIO_WERROR=ON &&
    cmake --build "$build_dir" -j "$jobs" &&
    ctest --test-dir "$build_dir" --output-on-failure --timeout 300
}

# Install into a scratch prefix, then build the consumer against it with find_package(kaio) and ctest, and
# compile and run its program once more with nothing but pkg-config's flags.
install_check() {
  local prefix scratch status=0
  scratch=$(mktemp -d)
  prefix=$scratch/prefix
  (
    set -e
    cmake --install "$build_dir" --prefix "$prefix"
    echo "-- installed: $(cd "$prefix" && find . -type f | sort | tr '\n' ' ')"
    cmake -S "$root/examples/consumer" -B "$scratch/consumer" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=RelWithDebInfo
    cmake --build "$scratch/consumer" -j "$jobs"
    ctest --test-dir "$scratch/consumer" --output-on-failure --timeout 120
    export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
    echo "-- pkg-config --cflags --libs kaio: $(pkg-config --cflags --libs kaio)"
    # shellcheck disable=SC2046  # word splitting of pkg-config's output is intended
    g++ -std=c++20 -O1 -o "$scratch/kaio_digest_pc" "$root/examples/consumer/main.cc" "$root/examples/consumer/digest.cc" \
      $(pkg-config --cflags --libs kaio)
    bash "$root/examples/consumer/kaio_digest_test.sh" "$scratch/kaio_digest_pc"
  )
  status=$?  # not `( ... ) || status=$?`: under ||, bash ignores the set -e inside the subshell
  rm -rf "$scratch"
  return $status
}

for phase in "${phases[@]}"; do
  case $phase in
    consumer) run_phase "consumer workspace" consumer ;;
    cmake) run_phase "cmake build + ctest" cmake_build ;;
    install) run_phase "install + find_package" install_check ;;
    *) echo "unknown phase '$phase' (consumer, cmake, install)" >&2; failed=1 ;;
  esac
done
summary
exit $failed
