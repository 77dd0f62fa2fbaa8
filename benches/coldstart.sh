#!/usr/bin/env bash
# Cold start of an encrypted image in containerd, side by side (run as root):
#   (a) lazy:  `lazycrypt pull` + `ctr run --snapshotter lazycrypt`
#   (b) eager: containerd's ordinary decrypt-on-unpack pull: a CRI
#       PullImage (as the kubelet makes it; CRI image_decryption key_model
#       "node", `lazycrypt stream-decrypt` as the stream processor,
#       overlayfs snapshotter) + `ctr run`
# Same encrypted eStargz image (>= 200 MiB; the container reads one small
# file), same loopback registry. Each run starts from nothing local:
# fresh containerd and lazycrypt state, page cache dropped; the daemons are
# already up (their start is not counted). Time = from the pull command to
# the container's marker on stdout.
#
#   RUNS=3 SIZE_MIB=256 ./benches/coldstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-256}
for c in docker-registry containerd ctr runc openssl python3; do
  command -v "$c" >/dev/null || { echo "missing $c (apt-get install docker-registry containerd runc)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "missing /bin/busybox (apt-get install busybox-static)" >&2; exit 1; }
cargo build --release --quiet
LC=$PWD/target/release/lazycrypt
W=$(mktemp -d /tmp/lazycrypt-coldstart.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Daemons started inside a timing loop (a subshell) are not in PIDS.
  pkill -f "$W/" 2>/dev/null || true
  sleep 1
  grep -o " $W[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$port
cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/regdata}}
http: {addr: $REG}
YML
docker-registry serve "$W/reg.yml" >/dev/null 2>&1 & PIDS+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

echo "== building a ${SIZE_MIB} MiB encrypted eStargz image"
mkdir -p "$W/src/bin" "$W/src/data" "$W/keys"
cp /bin/busybox "$W/src/bin/busybox"; ln -s busybox "$W/src/bin/sh"
for i in $(seq 1 $((SIZE_MIB / 16))); do head -c $((16 << 20)) /dev/urandom > "$W/src/data/blob$i.bin"; done
echo "cold start marker" > "$W/src/marker"
openssl genrsa -out "$W/keys/k.pem" 2048 2>/dev/null
openssl rsa -in "$W/keys/k.pem" -pubout -out "$W/pub.pem" 2>/dev/null
$LC build --no-gzip --cmd /bin/sh --layer "$W/src" -- "oci:$W/plain:v1" >/dev/null
IMG=$REG/bench/app:v1
$LC encrypt --plain-http --estargz -r "jwe:$W/pub.pem" "oci:$W/plain:v1" "docker://$IMG" >/dev/null

ctd_config() { # dir
  cat <<TOML
version = 2
root = "$1/root"
state = "$1/state"
[grpc]
  address = "$1/ctd.sock"
[proxy_plugins.lazycrypt]
  type = "snapshot"
  address = "$W/lz/lazycrypt.sock"
[stream_processors]
  [stream_processors."io.containerd.ocicrypt.decoder.v1.tar.gzip"]
    accepts = ["application/vnd.oci.image.layer.v1.tar+gzip+encrypted"]
    returns = "application/vnd.oci.image.layer.v1.tar+gzip"
    path = "$LC"
    args = ["stream-decrypt", "--decryption-keys-path", "$W/keys"]
[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".image_decryption]
    key_model = "node"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$1/cni/bin"
    conf_dir = "$1/cni/conf"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REG"]
    endpoint = ["http://$REG"]
TOML
}
start_daemons() {
  rm -rf "$W/lz" "$W/ctd"; mkdir -p "$W/lz" "$W/ctd"
  $LC serve --root "$W/lz/root" --address "$W/lz/lazycrypt.sock" --keys-dir "$W/keys" \
    --plain-http "$REG" >"$W/lz/log" 2>&1 & LZ=$!; PIDS+=($LZ)
  ctd_config "$W/ctd" > "$W/ctd/config.toml"
  containerd --config "$W/ctd/config.toml" >"$W/ctd/log" 2>&1 & CTD=$!; PIDS+=($CTD)
  for _ in $(seq 200); do [ -S "$W/ctd/ctd.sock" ] && [ -S "$W/lz/lazycrypt.sock" ] && break; sleep 0.05; done
  until ctr -a "$W/ctd/ctd.sock" plugins ls 2>/dev/null | grep -q "lazycrypt.*ok"; do sleep 0.1; done
  sync; echo 3 > /proc/sys/vm/drop_caches
}
stop_daemons() {
  local n
  for n in bench k8s.io; do
    ctr -a "$W/ctd/ctd.sock" -n "$n" images rm --sync "$IMG" >/dev/null 2>&1 || true
  done
  kill "$CTD" 2>/dev/null || true; wait "$CTD" 2>/dev/null || true
  kill "$LZ" 2>/dev/null || true; wait "$LZ" 2>/dev/null || true
  grep -o " $W/\(lz\|ctd\)[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
ms() { echo $(( ($2 - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# bench LABEL PULL_CMD RUN_NAMESPACE RUN_FLAGS: times pull + run from nothing local.
bench() {
  local label=$1 pull=$2 ns=$3 flags=$4
  for r in $(seq "$RUNS"); do
    start_daemons
    t0=$(date +%s%N)
    $pull >"$W/pull.out" 2>&1 || { cat "$W/pull.out" >&2; exit 1; }
    # shellcheck disable=SC2086
    out=$(ctr -a "$W/ctd/ctd.sock" -n "$ns" run --rm $flags "$IMG" "$label$r" /bin/busybox cat /marker)
    t1=$(date +%s%N)
    [ "$out" = "cold start marker" ] || { echo "wrong output: $out" >&2; exit 1; }
    echo "run $r: $(ms "$t0" "$t1") ms"
    stop_daemons
  done | tee "$W/$label"
  echo "median: $(awk '{print $3}' "$W/$label" | median) ms"
}

echo "== (a) lazycrypt pull + ctr run --snapshotter lazycrypt"
bench a "$LC pull --plain-http --address $W/ctd/ctd.sock --namespace bench $IMG" bench "--snapshotter lazycrypt"
echo "== (b) CRI PullImage (decrypt on unpack via stream processor) + ctr run"
bench b "$LC cri-pull --address $W/ctd/ctd.sock $IMG" k8s.io ""
A=$(awk '{print $3}' "$W/a" | median)
B=$(awk '{print $3}' "$W/b" | median)
python3 -c "print(f'== lazy is {$B / $A:.1f}x faster to the marker ({$B} ms vs {$A} ms, ${SIZE_MIB} MiB image)')"
