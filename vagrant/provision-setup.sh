#!/usr/bin/env bash
# Vagrant provisioner 2: make the guest a machine of the kind the README's set-up expects (root,
# rustup with stable), then run that set-up and build the benchmark harness.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl ca-certificates gcc make git >/dev/null
if ! command -v rustup >/dev/null 2>&1 && [ ! -x /root/.cargo/bin/rustup ]; then
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal \
    --default-toolchain stable --component rustfmt,clippy
fi
export PATH=/root/.cargo/bin:$PATH
cd /portcullis
bash scripts/setup
cargo build --release -p portcullis-perf
echo "ready: vagrant ssh -c 'cd /portcullis && sudo perf/run --quick'"
