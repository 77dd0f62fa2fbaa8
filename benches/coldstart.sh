#!/usr/bin/env bash
# Cold start of an encrypted image in containerd, side by side (run as root):
#   (a) lazy:  `lazycrypt pull` + `ctr run --snapshotter lazycrypt` of the
#       image encrypted as eStargz;
#   (c) eager: containerd's ordinary decrypt-on-unpack pull: a CRI
#       PullImage (`lazycrypt stream-decrypt` as the stream processor,
#       overlayfs) + `ctr run`.
# The model-serving workload (1 GiB; start-up reads 6.6% of it). A front for
# `lazycrypt bench cold-start`, which does the work (docs/benchmarks.md).
#
#   RUNS=3 SCALE=1 ./benches/coldstart.sh [more `bench cold-start` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
exec ./scripts/bench.sh --paths a,c --workload "${WORKLOAD:-model-serving}" \
  --runs "${RUNS:-3}" --scale "${SCALE:-1}" --out "${OUT:-bench-results/coldstart}" "$@"
