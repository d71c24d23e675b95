#!/usr/bin/env bash
# Installs everything kaio needs on a fresh Debian bookworm machine that reaches only Debian's archive:
# Bazel (Debian's bazel-bootstrap) and the local repositories it needs offline, libaio, moodycamel,
# liburing, nlohmann-json, fio, and Abseil's source package (built from source so TSan instruments it).
# Idempotent: a second run checks and returns in seconds.
set -euo pipefail
third=${KAIO_THIRD_PARTY_DIR:-/opt/kaio-deps}  # must match kaio_deps(third_party_dir) in WORKSPACE
say() { printf '[setup] %s\n' "$*"; }
sudo_if() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
export DEBIAN_FRONTEND=noninteractive

packages=(bazel-bootstrap bazel-platforms bazel-skylib bazel-rules-java libaio-dev libconcurrentqueue-dev
          liburing-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev libabsl-dev fio dpkg-dev clang
          libclang-rt-14-dev llvm-14 default-jdk-headless)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  sudo_if apt-get update -qq
  sudo_if apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  say "Debian packages already installed"
fi

# Abseil sources: Debian's source package for the installed libabsl-dev version, with Debian's patches
# applied (among them CVE-2025-0838, and absl/base/options.h pinned as Debian builds it: absl::string_view,
# optional, variant and any are Abseil's own types, never std's, in C++17 and C++20 alike; inline namespace
# absl::debian3; ABSL_OPTION_HARDENED=1). A stamp file written last marks a complete, patched tree, so a tree
# from an older setup (unpatched) or an interrupted copy is replaced.
want=$(dpkg-query -W -f='${source:Version}' libabsl-dev)
stamp="$third/abseil/.kaio-abseil-source"
stamp_text="abseil $want, Debian patches applied"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_text" ]; then
  say "Abseil $want sources (patched) already in $third/abseil"
else
  say "fetching Abseil's Debian source package $want into $third/abseil"
  # The source entries must cover the suites the binary can come from (bookworm-updates, -security too).
  src_list=/etc/apt/sources.list.d/kaio-deb-src.sources
  src_text='Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg'
  if ! [ -f "$src_list" ] || [ "$(cat "$src_list")" != "$src_text" ]; then
    say "writing deb-src entries to $src_list"
    printf '%s\n' "$src_text" | sudo_if tee "$src_list" >/dev/null
    sudo_if apt-get update -qq
  fi
  work=$(mktemp -d)
  new="$third/.abseil-new" old="$third/.abseil-old"
  trap 'rm -rf "$work"; sudo_if rm -rf "$new" "$old"' EXIT
  (
    cd "$work"
    # As root, apt-get warns that the download is unsandboxed (_apt cannot write here); that is harmless.
    if ! apt-get source -qq --download-only "abseil=$want" >/dev/null 2>"$work/apt.err"; then
      say "WARNING: abseil=$want is not in the source archive ($(tail -n 1 "$work/apt.err")); taking the newest"
      apt-get source -qq --download-only abseil >/dev/null
    fi
    # dpkg-source applies debian/patches/series (format 3.0 (quilt)) and records them in .pc/.
    # (It cannot check the .dsc's OpenPGP signature without debian-keyring; apt verified the checksums.)
    dpkg-source -x abseil_*.dsc src >/dev/null 2>"$work/dpkg-source.err" || { cat "$work/dpkg-source.err" >&2; exit 1; }
    series=$(sed -e 's/#.*//' -e 's/[[:space:]].*//' -e '/^$/d' src/debian/patches/series 2>/dev/null || true)
    applied=$(cat src/.pc/applied-patches 2>/dev/null || true)
    if [ "$series" != "$applied" ]; then
      say "ERROR: Debian's patches were not all applied to Abseil (series: ${series//$'\n'/ }; applied: ${applied//$'\n'/ })" >&2
      exit 1
    fi
    say "applied Debian's patches: ${applied//$'\n'/ }"
    printf '%s\n' "$stamp_text" >src/.kaio-abseil-source
  )
  sudo_if mkdir -p "$third"
  sudo_if rm -rf "$new" "$old"
  sudo_if cp -a "$work/src" "$new"
  # Swap the tree in with two renames, so a running build never sees a half-copied tree.
  if [ -e "$third/abseil" ]; then sudo_if mv "$third/abseil" "$old"; fi
  sudo_if mv "$new" "$third/abseil"
fi
say "done"
