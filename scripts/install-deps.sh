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

# containerd 2.1 beside Debian 12's 1.6 (the containerd tests run on both):
# Debian 12 ships only 1.6, so its .deb comes from Debian's unstable suite,
# fetched through a private apt configuration (its own sources list naming
# the mirror the system already uses, its own lists and cache; the system's
# apt sources stay as they are) and unpacked with dpkg -x into a private
# prefix, never installed. Bookworm's runc serves it (unstable's needs a
# newer glibc).
ctd2_prefix="${LAZYCRYPT_CONTAINERD2:-/opt/lazycrypt-test/containerd2}"
ctd2_want="2.1.9"
if ! "$ctd2_prefix/usr/bin/containerd" --version 2>/dev/null | grep -q " $ctd2_want"; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mirror=$(apt-get indextargets --format '$(SITE)' 'Identifier: Packages' 2>/dev/null \
    | grep -v -- '-security' | head -n1)
  mirror="${mirror:-http://deb.debian.org/debian}"
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/prefs.d" "$work/parts.d"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${mirror%/} unstable main" \
    > "$work/sources.list"
  apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts.d"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o "Dir::Etc::Preferences=$work/prefs" -o "Dir::Etc::PreferencesParts=$work/prefs.d"
    -o "APT::Sandbox::User=root")
  echo "fetching containerd $ctd2_want from Debian unstable ($mirror) into $ctd2_prefix"
  apt-get "${apt_private[@]}" update -qq
  # The newest 2.1.9 build unstable has; its Debian revision may move.
  version=$(apt-cache "${apt_private[@]}" madison containerd \
    | awk -v w="$ctd2_want" '$3 ~ "^"w"[~+-]" {print $3; exit}')
  if [ -z "$version" ]; then
    echo "install-deps: Debian unstable at $mirror has no containerd $ctd2_want" \
         "(it has: $(apt-cache "${apt_private[@]}" madison containerd | awk '{print $3}' | xargs))" >&2
    exit 1
  fi
  (cd "$work" && apt-get "${apt_private[@]}" download -qq "containerd=$version")
  rm -rf "$ctd2_prefix.new"
  mkdir -p "$ctd2_prefix.new"
  dpkg -x "$work"/containerd_*.deb "$ctd2_prefix.new"
  # It must run on this system's glibc.
  "$ctd2_prefix.new/usr/bin/containerd" --version
  "$ctd2_prefix.new/usr/bin/ctr" --version >/dev/null
  "$ctd2_prefix.new/usr/bin/containerd-shim-runc-v2" -v >/dev/null
  rm -rf "$ctd2_prefix"
  mv "$ctd2_prefix.new" "$ctd2_prefix"
  chmod 0755 "$(dirname "$ctd2_prefix")"
fi
