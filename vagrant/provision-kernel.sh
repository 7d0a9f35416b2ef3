#!/usr/bin/env bash
# Vagrant provisioner 1: a kernel of at least 6.6 (TCX links for the node hook; the perf harness
# needs BPF_F_TEST_XDP_LIVE_FRAMES, 5.18) from bookworm-backports. Vagrant reboots afterwards.
set -euo pipefail
need=6.6
have=$(uname -r | cut -d- -f1)
if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n1)" = "$need" ]; then
  echo "kernel $have is recent enough"
  exit 0
fi
# shellcheck source=/dev/null
. /etc/os-release
echo "deb http://deb.debian.org/debian ${VERSION_CODENAME}-backports main" \
  >/etc/apt/sources.list.d/backports.list
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq -t "${VERSION_CODENAME}-backports" linux-image-amd64 >/dev/null
echo "installed a backports kernel; rebooting into it"
