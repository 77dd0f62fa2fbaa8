#!/usr/bin/env bash
# Load and soak of `lazycrypt serve` with containerd and runc (run as root):
# 40 containers from 8 encrypted images (eStargz, tar.gz, tar+zstd, tar)
# started at once under a 64 MiB chunk cache, each checking its files'
# digests; then MINUTES (default 10) of pull/run/remove. Prints containers
# started and failed, and the daemon's open fds, threads, RSS, mounts and
# sealed-file / blob-cache disk before, at peak and after, with the leaks
# found. It is the CI test tests/soak.rs (a 1-minute loop there) run longer.
#
#   ./benches/soak.sh [MINUTES]          RELEASE=1 for an optimised build
set -euo pipefail
cd "$(dirname "$0")/.."
export LAZYCRYPT_SOAK_MINUTES=${1:-10}
exec nice -n "${NICE:-10}" cargo test ${RELEASE:+--release} --test soak -- --nocapture
