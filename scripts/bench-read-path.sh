#!/usr/bin/env bash
# The read-path benchmark (BENCHMARKS.md): installs wrk, nginx-light and
# redis-server from Debian's packages when missing, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v redis-benchmark >/dev/null 2>&1 || missing+=(redis-server redis-tools)
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# `miss`: the miss-path benchmark (100,000 users' tokens) instead.
case "${1:-}" in
    miss) cargo bench --bench miss_path ;;
    *) cargo bench --bench read_path ;;
esac
