#!/usr/bin/env bash
# Install Prometheus and promtool (Debian's `prometheus` package) when promtool is missing.
# Idempotent: does nothing when promtool is already on PATH. Needed by `make test`
# (tests/unit/test_prometheus_rules.py, tests/integration/test_prometheus_scrape.py).
#
# Debian's package starts no daemon in a container without systemd; on a machine with
# systemd it enables prometheus.service, which this script stops and disables again
# (the tests start their own server on a free loopback port).
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "promtool already installed: $(promtool --version 2>&1 | head -n1)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-prometheus.sh: need root (or sudo) to apt-get install prometheus" >&2
        exit 1
    fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-prometheus.sh: no apt-get; install Prometheus >= 2.42 (prometheus and" \
        "promtool on PATH) with your package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi

echo "installed: $(promtool --version 2>&1 | head -n1)"
