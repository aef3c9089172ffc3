#!/usr/bin/env bash
# Debian packages the tests, the lab, the demo and the benchmarks need. Idempotent; needs root.
set -euo pipefail
pkgs=(prometheus iptables iproute2 wrk nginx-light haproxy curl python3-venv ca-certificates zsh)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package may start its own Prometheus on :9090; the mesh starts its own instances.
if command -v service >/dev/null && pgrep -x prometheus >/dev/null 2>&1; then
  service prometheus stop >/dev/null 2>&1 || pkill -x prometheus || true
fi
