#!/usr/bin/env bash
# The cold-start benchmark on a fresh machine (run as root): installs what
# it drives (scripts/install-deps.sh), builds lazycrypt in release mode, and
# runs `lazycrypt bench cold-start` with the arguments given, e.g.
#   ./scripts/bench.sh --shape 1gbit,1 --runs 3
# Results: bench-results/{results.md,results.json,chart.svg}. The method is
# in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
cargo build --release --locked --quiet
exec target/release/lazycrypt bench cold-start "$@"
