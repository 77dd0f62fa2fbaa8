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
# fetched through a private apt configuration (its own sources list on
# Debian's mirror, its own lists and cache; the system's apt sources stay as
# they are; signatures checked against Debian's archive keyring) and
# unpacked with dpkg -x into a private prefix, never installed. Bookworm's
# runc serves it (unstable's needs a newer glibc). The prefix holds a stamp
# naming the version; a prefix without one is not this script's, and is
# never replaced.
ctd2_prefix="${LAZYCRYPT_CONTAINERD2:-/opt/lazycrypt-test/containerd2}"
ctd2_want="2.1.9"
ctd2_stamp="$ctd2_prefix/.lazycrypt-containerd2"
ctd2_mirror="${LAZYCRYPT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if [ "$(cat "$ctd2_stamp" 2>/dev/null)" != "$ctd2_want" ]; then
  if [ -e "$ctd2_prefix" ] && [ ! -e "$ctd2_stamp" ]; then
    echo "install-deps: $ctd2_prefix exists and is not a containerd this script unpacked; set LAZYCRYPT_CONTAINERD2 to another directory" >&2
    exit 1
  fi
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if [ ! -r "$keyring" ]; then
    echo "install-deps: $keyring is missing (package debian-archive-keyring): containerd $ctd2_want cannot be fetched from Debian unstable" >&2
    exit 1
  fi
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/prefs.d" "$work/parts.d"
  echo "deb [signed-by=$keyring] ${ctd2_mirror%/} unstable main" > "$work/sources.list"
  apt_private=(-o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=$work/parts.d"
    -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
    -o "Dir::Etc::Preferences=$work/prefs" -o "Dir::Etc::PreferencesParts=$work/prefs.d")
  [ -z "$sudo" ] && apt_private+=(-o "APT::Sandbox::User=root")
  echo "fetching containerd $ctd2_want from Debian unstable ($ctd2_mirror) into $ctd2_prefix"
  apt-get "${apt_private[@]}" update -qq
  # The newest build of that upstream version; its Debian revision may move.
  want_re="^${ctd2_want//./[.]}[~+-]"
  version=$(apt-cache "${apt_private[@]}" madison containerd | awk -v re="$want_re" '$3 ~ re {print $3; exit}')
  if [ -z "$version" ]; then
    echo "install-deps: Debian unstable at $ctd2_mirror no longer has containerd $ctd2_want" \
         "(it has: $(apt-cache "${apt_private[@]}" madison containerd | awk '{print $3}' | xargs));" \
         "update ctd2_want here and the versions the README names" >&2
    exit 1
  fi
  (cd "$work" && apt-get "${apt_private[@]}" download -qq "containerd=$version")
  $sudo rm -rf "$ctd2_prefix.new"
  $sudo mkdir -p "$ctd2_prefix.new"
  $sudo dpkg -x "$work"/containerd_*.deb "$ctd2_prefix.new"
  # It must run on this system's glibc.
  "$ctd2_prefix.new/usr/bin/containerd" --version
  "$ctd2_prefix.new/usr/bin/ctr" --version >/dev/null
  "$ctd2_prefix.new/usr/bin/containerd-shim-runc-v2" -v >/dev/null
  echo "$ctd2_want" | $sudo tee "$ctd2_prefix.new/.lazycrypt-containerd2" >/dev/null
  [ -e "$ctd2_stamp" ] && $sudo rm -rf "$ctd2_prefix"
  $sudo mv "$ctd2_prefix.new" "$ctd2_prefix"
fi
