#!/usr/bin/env bash
# Installs the Debian packages the tests and the benchmarks drive when they
# are missing: skopeo (the independent ocicrypt peer), docker-registry,
# openssl, gnupg, htpasswd, containerd + runc, busybox-static (container
# images), iproute2 (`tc`, network shaping), Go and containerd's Go source
# (containerd's own snapshotter test suite, built offline in GOPATH mode);
# then loads fuse and overlay.
set -euo pipefail

need=()
for pair in skopeo:skopeo docker-registry:docker-registry openssl:openssl gpg:gnupg \
            htpasswd:apache2-utils python3:python3 curl:curl containerd:containerd \
            runc:runc ctr:containerd tc:iproute2 ip:iproute2; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
# Container images need a static busybox (no libc inside them).
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
# containerd's snapshots/testsuite and its Go dependencies (golang-*-dev).
command -v go >/dev/null 2>&1 || need+=(golang-go)
dpkg -s golang-github-containerd-containerd-dev >/dev/null 2>&1 \
  || need+=(golang-github-containerd-containerd-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# FUSE and overlayfs mounts (as root).
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
