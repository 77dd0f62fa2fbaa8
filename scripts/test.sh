#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the Debian packages the tests
# drive (scripts/install-deps.sh), checks formatting and lints, then runs
# every test, FUSE and overlay mounts and real containers included (run as
# root).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

# A build from a clean checkout gains nothing from incremental compilation,
# whose caches more than double target/ (measured: 5 GiB of binaries, 9 GiB
# of caches after a few runs). A developer who wants them sets it to 1.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# The build and the tests' images need room; a full disk otherwise shows up
# as a linker's bus error halfway through. Say so before starting.
need_gib=8
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
for dir in "$target_dir" "${TMPDIR:-/tmp}"; do
  free_kib=$(df -Pk "$dir" | awk 'NR == 2 { print $4 }')
  if [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    echo "test.sh: $dir has $((free_kib / 1024)) MiB free; the build and the tests need ${need_gib} GiB" >&2
    exit 1
  fi
done

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
