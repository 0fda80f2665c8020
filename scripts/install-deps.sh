#!/usr/bin/env bash
# Installs, from Debian packages, the servers and tools rota's tests use: ZooKeeper, etcd and
# PostgreSQL (started as throwaway servers by the test harness) and protoc with its well-known
# types (needed to build the etcd client). Idempotent: installs only what is missing, and does
# nothing on a machine that has everything. Needs root (or sudo) the first time.
set -euo pipefail

# package -> a file (glob) that proves it is installed. For PostgreSQL the server binary
# itself: a machine may have only the client tools.
declare -A probes=(
  [protobuf-compiler]=/usr/bin/protoc
  [libprotobuf-dev]=/usr/include/google/protobuf/descriptor.proto
  [zookeeper]=/usr/share/zookeeper
  [etcd-server]=/usr/bin/etcd
  [postgresql]='/usr/lib/postgresql/*/bin/postgres'
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
  echo "install-deps: everything is installed"
  exit 0
fi

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
echo "install-deps: done"
