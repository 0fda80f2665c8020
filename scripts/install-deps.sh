#!/usr/bin/env bash
# Installs, from Debian packages, the servers and tools rota's tests use: ZooKeeper, etcd and
# PostgreSQL (started as throwaway servers by the test harness) and protoc (needed to build the
# etcd client). Idempotent: installs only what is missing, and does nothing on a machine that
# has everything. Needs root (or sudo) the first time.
set -euo pipefail

# package -> a file that proves it is installed
declare -A probes=(
  [protobuf-compiler]=/usr/bin/protoc
  [zookeeper]=/usr/share/zookeeper
  [etcd-server]=/usr/bin/etcd
  [postgresql]=/usr/lib/postgresql
)

missing=()
for package in "${!probes[@]}"; do
  [ -e "${probes[$package]}" ] || missing+=("$package")
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
  [ -e "${probes[$package]}" ] || { echo "install-deps: $package installed but ${probes[$package]} is missing" >&2; exit 1; }
done
echo "install-deps: done"
