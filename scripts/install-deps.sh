#!/usr/bin/env bash
# Installs, from Debian packages, the servers and tools rota's tests use: ZooKeeper, etcd and
# PostgreSQL (started as throwaway servers by the test harness), protoc with its well-known
# types (needed to build the etcd client), Python with venv, and iproute2 and iptables (hosts
# in network namespaces whose links the partition test cuts); then schemathesis from PyPI into
# .tools/schemathesis (the API's property-based test), and the nightly toolchain with
# cargo-fuzz for the fuzz targets. Idempotent: installs only what is
# missing, and does nothing on a machine that has everything. Needs root (or sudo) the first
# time.
set -euo pipefail
cd "$(dirname "$0")/.."

# package -> a file (glob) that proves it is installed. For PostgreSQL the server binary
# itself: a machine may have only the client tools.
declare -A probes=(
  [protobuf-compiler]=/usr/bin/protoc
  [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
  [zookeeper]=/usr/share/zookeeper
  [etcd-server]=/usr/bin/etcd
  [postgresql]='/usr/lib/postgresql/*/bin/postgres'
  [python3]=/usr/bin/python3
  [python3-venv]='/usr/lib/python3*/ensurepip/__init__.py'
  [iproute2]=/usr/sbin/ip
  [iptables]=/usr/sbin/iptables
)

present() {
  # shellcheck disable=SC2086 # the probe is a glob on purpose
  compgen -G "$1" >/dev/null
}

missing=()
for package in "${!probes[@]}"; do
  present "${probes[$package]}" || missing+=("$package")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: every Debian package is installed"
else
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for package in "${missing[@]}"; do
    present "${probes[$package]}" || { echo "install-deps: $package installed but ${probes[$package]} is missing" >&2; exit 1; }
  done
  echo "install-deps: Debian packages done"
fi

# schemathesis, pinned, in a virtual environment of the checkout (the system's Python, not
# whatever python3 comes first on PATH).
schemathesis_version=4.32.5
venv=.tools/schemathesis
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  echo "install-deps: installing schemathesis $schemathesis_version into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$schemathesis_version"
  "$venv/bin/st" --version >/dev/null
fi
# The fuzz targets (scripts/fuzz.sh): the nightly toolchain, for the sanitizers, and
# cargo-fuzz, pinned, into .tools/cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "install-deps: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
cargo_fuzz_version=0.13.2
if ! .tools/cargo-fuzz/bin/cargo-fuzz --version 2>/dev/null | grep -q "$cargo_fuzz_version"; then
  echo "install-deps: installing cargo-fuzz $cargo_fuzz_version into .tools/cargo-fuzz"
  cargo install -q --locked --root .tools/cargo-fuzz cargo-fuzz --version "$cargo_fuzz_version"
fi
echo "install-deps: done"
