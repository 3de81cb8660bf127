#!/usr/bin/env bash
# One command from a fresh Debian machine (as root) to the demo or the test suite:
#   bash e2e/bootstrap.sh demo [--keep]     build a namespace cluster, apply Services, show traffic
#   bash e2e/bootstrap.sh test [pytest args] run every test, kernel tests included
#   bash e2e/bootstrap.sh bench [args]      the benchmark (nftproxy bench --help)
# It installs what it needs: Debian packages (nftables, libnftables1, conntrack, iproute2, iptables for the
# kube-proxy migration test, bird2 for BGP mode and its test router, python3-venv)
# and the package with its test extras into .venv at the top of the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "nftproxy programs nftables in network namespaces: run this as root" >&2
    exit 2
fi

packages=(nftables libnftables1 conntrack iproute2 iptables bird2)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.nftproxy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi

what="${1:-}"
shift || true
case "$what" in
    demo) exec .venv/bin/python -m nftproxy demo "$@" ;;
    test) exec .venv/bin/python -m pytest "$@" ;;
    bench) exec .venv/bin/python -m nftproxy bench "$@" ;;
    *) echo "usage: bash e2e/bootstrap.sh demo|test|bench [args]" >&2; exit 2 ;;
esac
