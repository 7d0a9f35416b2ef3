#!/usr/bin/env bash
# Vagrant provisioner 3 (on demand: vagrant provision --provision-with kube-node): everything
# scripts/kube-node-e2e needs, built once, so that a run in the guest only brings the node up:
# the Kubernetes 1.20.2 binaries and e2e.test from Debian's source package (about 20 minutes on
# 2 CPUs, cached in /var/cache/portcullis/kube-1.20), the apt packages of the node (containerd,
# runc, CNI plugins, ...) and the release build of portcullis for the image.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive PATH=/root/.cargo/bin:$PATH
apt-get update -qq
apt-get install -y -qq --no-install-recommends containerd runc containernetworking-plugins \
  conntrack socat iptables nftables iproute2 util-linux openssl curl kmod python3 >/dev/null
# Debian starts a system containerd; the test runs its own (own socket, config and CNI dirs).
systemctl disable --now containerd >/dev/null 2>&1 || true
cd /portcullis
bash scripts/kube-test-cluster build-node
cargo build --release -p portcullis
echo "ready: vagrant ssh -c 'sudo -i sh -c \"cd /portcullis && scripts/kube-node-e2e --cni bridge\"'"
