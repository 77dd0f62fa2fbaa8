#!/usr/bin/env bash
# Installs the Debian packages the tests and the benchmarks drive when they
# are missing: skopeo (the independent ocicrypt peer), docker-registry,
# openssl, gnupg, htpasswd, containerd + runc, busybox-static (container
# images), iproute2 (`tc`, network shaping), Go and containerd's Go source
# (containerd's own snapshotter test suite, built offline in GOPATH mode);
# then loads fuse and overlay; then unpacks containerd 2.1, cosign 3.1 and
# skopeo 1.22 (sigstore enabled) from Debian unstable into private prefixes.
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

# Packages Debian 12 lacks come from Debian's unstable suite, fetched
# through a private apt configuration (its own sources list on Debian's
# mirror, its own lists and cache; the system's apt sources stay as they
# are; signatures checked against Debian's archive keyring) and unpacked
# with dpkg -x into a private prefix, never installed. Each prefix holds a
# stamp naming the version; a prefix without one is not this script's, and
# is never replaced.
unstable_mirror="${LAZYCRYPT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
unstable_work=""
apt_private=()
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Sets up the private apt configuration and reads unstable's package lists,
# once for all packages; WHAT names the package wanted, for the error.
unstable_apt() {
  local what=$1
  [ -n "$unstable_work" ] && return 0
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  if [ ! -r "$keyring" ]; then
    echo "install-deps: $keyring is missing (package debian-archive-keyring): $what cannot be fetched from Debian unstable" >&2
    exit 1
  fi
  unstable_work=$(mktemp -d)
  trap 'rm -rf "$unstable_work"' EXIT
  local w=$unstable_work
  mkdir -p "$w/lists/partial" "$w/cache/archives/partial" "$w/prefs.d" "$w/parts.d"
  echo "deb [signed-by=$keyring] ${unstable_mirror%/} unstable main" > "$w/sources.list"
  apt_private=(-o "Dir::Etc::SourceList=$w/sources.list" -o "Dir::Etc::SourceParts=$w/parts.d"
    -o "Dir::State::Lists=$w/lists" -o "Dir::Cache=$w/cache"
    -o "Dir::Etc::Preferences=$w/prefs" -o "Dir::Etc::PreferencesParts=$w/prefs.d")
  [ -z "$sudo" ] && apt_private+=(-o "APT::Sandbox::User=root")
  apt-get "${apt_private[@]}" update -qq
}

# unstable_unpack NAME PACKAGE VERSION PREFIX ENVVAR CHECK [LIB=VERSION...]:
# unpacks the newest Debian build of upstream VERSION of PACKAGE, and of
# each LIB at its VERSION, into PREFIX (stamp .lazycrypt-NAME, holding
# "VERSION LIB=VERSION...") unless it is there already; CHECK DIR must
# succeed on the unpacked tree before it replaces PREFIX. ENVVAR is the
# variable that moves PREFIX.
unstable_unpack() {
  local name=$1 pkg=$2 want=$3 prefix=$4 envvar=$5 check=$6
  shift 6
  local stamp="$prefix/.lazycrypt-$name" stamped="$want${*:+ $*}"
  [ "$(cat "$stamp" 2>/dev/null)" = "$stamped" ] && return 0
  if [ -e "$prefix" ] && [ ! -e "$stamp" ]; then
    echo "install-deps: $prefix exists and is not a $pkg this script unpacked; set $envvar to another directory" >&2
    exit 1
  fi
  unstable_apt "$pkg $want"
  echo "fetching $pkg $want${*:+ (with $*)} from Debian unstable ($unstable_mirror) into $prefix"
  $sudo rm -rf "$prefix.new"
  $sudo mkdir -p "$prefix.new"
  local spec p v version
  for spec in "$pkg=$want" "$@"; do
    p=${spec%%=*} v=${spec#*=}
    # The newest build of that upstream version; its Debian revision may move.
    version=$(apt-cache "${apt_private[@]}" madison "$p" | awk -v re="^${v//./[.]}[~+-]" '$3 ~ re {print $3; exit}')
    if [ -z "$version" ]; then
      echo "install-deps: Debian unstable at $unstable_mirror no longer has $p $v" \
           "(it has: $(apt-cache "${apt_private[@]}" madison "$p" | awk '{print $3}' | xargs));" \
           "update its version here and the versions the README names" >&2
      exit 1
    fi
    (cd "$unstable_work" && apt-get "${apt_private[@]}" download -qq "$p=$version")
    $sudo dpkg -x "$unstable_work/${p}_${version#*:}_"*.deb "$prefix.new"
  done
  "$check" "$prefix.new"
  echo "$stamped" | $sudo tee "$prefix.new/.lazycrypt-$name" >/dev/null
  [ -e "$stamp" ] && $sudo rm -rf "$prefix"
  $sudo mv "$prefix.new" "$prefix"
}

# containerd 2.1 beside Debian 12's 1.6 (the containerd tests run on both).
# Bookworm's runc serves it (unstable's needs a newer glibc).
check_containerd() {
  "$1/usr/bin/containerd" --version
  "$1/usr/bin/ctr" --version >/dev/null
  "$1/usr/bin/containerd-shim-runc-v2" -v >/dev/null
}
unstable_unpack containerd2 containerd 2.1.9 \
  "${LAZYCRYPT_CONTAINERD2:-/opt/lazycrypt-test/containerd2}" LAZYCRYPT_CONTAINERD2 check_containerd

# cosign 3.1, the signer and verifier the signature tests hold lazycrypt's
# verification against (Debian 12 has no cosign).
check_cosign() {
  "$1/usr/bin/cosign" version >/dev/null
}
unstable_unpack cosign cosign 3.1.1 \
  "${LAZYCRYPT_COSIGN:-/opt/lazycrypt-test/cosign}" LAZYCRYPT_COSIGN check_cosign

# skopeo 1.22 with sigstore, the second independent signer and verifier
# beside cosign: Debian 12's skopeo 1.9.3 (above, the ocicrypt peer) was
# built with sigstore disabled. Unstable's skopeo needs glibc 2.38 and
# gpgme 2, newer than Debian 12's, so unstable's own dynamic loader, libc
# and the libraries skopeo links are unpacked into the same private prefix,
# and PREFIX/bin/skopeo starts the binary through that loader with
# --library-path: nothing on the system changes, no other program sees
# these libraries. LAZYCRYPT_SKOPEO_SIGSTORE names that wrapper (as the
# tests read it); the prefix is the directory above its bin/.
check_skopeo() {
  local loader
  loader=$(cd "$1" && ls usr/lib/*/ld-linux*.so.[0-9])
  $sudo mkdir -p "$1/bin"
  # The wrapper finds the prefix from its own path: it runs here, in
  # PREFIX.new, before it is moved into place.
  $sudo tee "$1/bin/skopeo" >/dev/null <<EOF
#!/bin/sh
# skopeo from Debian unstable, on unstable's loader and libc (scripts/install-deps.sh).
p=\$(dirname "\$(dirname "\$(readlink -f "\$0")")")
exec "\$p/$loader" --library-path "\$p/${loader%/*}" "\$p/usr/bin/skopeo" "\$@"
EOF
  $sudo chmod 755 "$1/bin/skopeo"
  "$1/bin/skopeo" --version
}
skopeo_sigstore="${LAZYCRYPT_SKOPEO_SIGSTORE:-/opt/lazycrypt-test/skopeo-sigstore/bin/skopeo}"
if [ "${skopeo_sigstore%/bin/skopeo}" = "$skopeo_sigstore" ]; then
  echo "install-deps: LAZYCRYPT_SKOPEO_SIGSTORE=$skopeo_sigstore does not end in /bin/skopeo" >&2
  exit 1
fi
unstable_unpack skopeo-sigstore skopeo 1.22.0 "${skopeo_sigstore%/bin/skopeo}" LAZYCRYPT_SKOPEO_SIGSTORE \
  check_skopeo libc6=2.43 libgpgme45=2.2.0 libassuan9=3.0.2 libgpg-error0=1.61 libsqlite3-0=3.53.4
