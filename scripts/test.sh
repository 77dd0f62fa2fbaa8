#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the Debian packages the tests
# drive (skopeo as the independent ocicrypt peer, docker-registry, openssl,
# gnupg, htpasswd, containerd + runc for the snapshotter, busybox-static for
# container images), checks formatting and lints, then runs every test, FUSE
# and overlay mounts and real containers included (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pair in skopeo:skopeo docker-registry:docker-registry openssl:openssl gpg:gnupg \
            htpasswd:apache2-utils python3:python3 curl:curl containerd:containerd \
            runc:runc ctr:containerd; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# Container images need a static busybox (no libc inside them).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The mount tests use real FUSE and overlayfs mounts (as root).
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true

cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked --all-targets
