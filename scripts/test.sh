#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the Debian packages the tests
# drive (scripts/install-deps.sh), checks formatting and lints, then runs
# every test, FUSE and overlay mounts and real containers included (run as
# root).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
