#!/usr/bin/env bash
# Install the Debian packages the test suite needs, when they are missing (CI runs on fresh machines).
set -euo pipefail

# command -> Debian package
declare -A needs=(
  [git]=git
  [rsync]=rsync   # benchmarks/snapshot_bench.py compares against rsync --link-dest
  [sshd]=openssh-server   # the SSH transport is tested against a real OpenSSH server on loopback
  [ssh-keygen]=openssh-client
  [ip]=iproute2   # the partition tests put each node's sshd in a network namespace of its own
  [promtool]=prometheus   # metrics output must pass 'promtool check metrics'
  [prometheus-pushgateway]=prometheus-pushgateway   # a real Pushgateway receives 'haios metrics push'
  [chromium]=chromium   # the HTML timeline report is opened in headless Chromium
  [etcd]=etcd-server   # the etcd coordination backend is tested against a real 3-member cluster
  [etcdctl]=etcd-client
  [systemd-analyze]=systemd   # the shipped systemd units must pass systemd-analyze verify
  [cc]=gcc   # builds haios's optional C loop of a WAL verify (haios/wal/_scan.c) when haios is installed
)

missing=()
export PATH="$PATH:/usr/sbin:/sbin"   # sshd lives in /usr/sbin
for cmd in "${!needs[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
done
[[ -f /usr/include/zlib.h ]] || missing+=(zlib1g-dev)   # the C loop's CRC-32 is zlib's
((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]]; then
  echo "tests need these Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "installing Debian packages for the tests: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
