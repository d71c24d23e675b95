#!/usr/bin/env bash
# Installs everything kaio needs on a fresh Debian bookworm machine that reaches only Debian's archive:
# Bazel (Debian's bazel-bootstrap) and the local repositories it needs offline, libaio, moodycamel,
# liburing, fio, and Abseil's source package (built from source so TSan instruments it).
# Idempotent: a second run checks and returns in seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
third=${KAIO_THIRD_PARTY_DIR:-/opt/kaio-deps}
say() { printf '[setup] %s\n' "$*"; }
sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(bazel-bootstrap bazel-platforms bazel-skylib bazel-rules-java libaio-dev libconcurrentqueue-dev
          liburing-dev libgtest-dev libbenchmark-dev libabsl-dev fio dpkg-dev clang libclang-rt-14-dev
          llvm-14 default-jdk-headless)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_if apt-get update -qq
  sudo_if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages already installed"
fi

# Abseil sources, from the Debian source package matching the installed binary version.
if [ ! -f "$third/abseil/absl/base/config.h" ]; then
  say "fetching Abseil's Debian source package into $third/abseil"
  if ! grep -rqs '^Types: deb deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    say "adding a deb-src entry for bookworm"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      sudo_if tee /etc/apt/sources.list.d/kaio-deb-src.sources >/dev/null
    sudo_if apt-get update -qq
  fi
  sudo_if mkdir -p "$third"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get source -qq --download-only abseil >/dev/null && dpkg-source -x abseil_*.dsc src >/dev/null)
  sudo_if rm -rf "$third/abseil"
  sudo_if cp -a "$tmp/src" "$third/abseil"
  rm -rf "$tmp"
else
  say "Abseil sources already in $third/abseil"
fi
say "done"
