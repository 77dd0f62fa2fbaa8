#!/usr/bin/env bash
# The lazy mount, measured through the kernel (run as root):
#   - first byte: from starting `lazycrypt mount` of an eStargz image in a
#     loopback registry to the first small file read, cold caches;
#   - sequential read of a 100 MiB file through FUSE + overlay from a warm
#     ciphertext cache (second mount, empty memory cache, page cache dropped),
#     incompressible and compressible text;
#   - random 4 KiB reads of chunks already in the memory cache (page cache
#     dropped, kernel read-ahead off for the file), as IOPS;
#   - peak RSS of the mount process against its cache budget.
#
#   RUNS=3 ./benches/mount.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
for c in docker-registry openssl python3; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
cargo build --release --quiet
LC=$PWD/target/release/lazycrypt
W=$(mktemp -d /tmp/lazycrypt-mount-bench.XXXXXX)
MNT=$W/mnt
cleanup() {
  $LC umount --run-dir "$W/run" "$MNT" 2>/dev/null || true
  [ -n "${REG:-}" ] && kill "$REG" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/reg.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $W/regdata}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$W/reg.yml" >/dev/null 2>&1 & REG=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

mkdir -p "$W/src" "$MNT"
head -c $((100 << 20)) /dev/urandom > "$W/src/noise.bin"
python3 - "$W/src/text.txt" <<'PY'
import sys, random
random.seed(7)
words = ["lazy", "crypt", "chunk", "verify", "decrypt", "overlay", "snapshot", "layer", "index", "kernel"]
with open(sys.argv[1], "w") as f:
    n = 0
    while n < 100 << 20:
        line = " ".join(random.choice(words) for _ in range(12)) + f" {random.randrange(10**6)}\n"
        f.write(line); n += len(line)
PY
truncate -s $((100 << 20)) "$W/src/text.txt"
echo "first byte" > "$W/src/small.txt"
openssl genrsa -out "$W/key.pem" 2048 2>/dev/null
openssl rsa -in "$W/key.pem" -pubout -out "$W/pub.pem" 2>/dev/null
$LC build --no-gzip --layer "$W/src" "oci:$W/plain:v1" >/dev/null
IMG=docker://127.0.0.1:$port/bench/app:v1
$LC encrypt --plain-http --estargz ${CHUNK:+--chunk-size $CHUNK} -r "jwe:$W/pub.pem" "oci:$W/plain:v1" "$IMG" >/dev/null

start_mount() { # extra args...
  $LC mount --plain-http --key "$W/key.pem" --root "$W/state" --run-dir "$W/run" --stats "$@" "$IMG" "$MNT" > "$W/out" 2> "$W/err" &
  MPID=$!
  until grep -q '^mounted' "$W/out" 2>/dev/null; do
    kill -0 $MPID 2>/dev/null || { cat "$W/err" >&2; exit 1; }
    sleep 0.005
  done
}
stop_mount() {
  $LC umount --run-dir "$W/run" "$MNT"
  wait $MPID || true
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "== first byte of a small file after mount (cold: empty state, loopback registry)"
for r in $(seq "$RUNS"); do
  rm -rf "$W/state"; drop_caches
  t0=$(date +%s%N)
  start_mount
  cat "$MNT/small.txt" > /dev/null
  t1=$(date +%s%N)
  echo "run $r: $(( (t1 - t0) / 1000000 )) ms"
  stop_mount
done | tee "$W/fb"
echo "median: $(awk '{print $3}' "$W/fb" | median) ms"

seq_read() { # file
  local f=$1 times=()
  # Fill the ciphertext disk cache once, with the whole blob: a layer
  # that is all on this node gets the large kernel read-ahead.
  start_mount; cat "$MNT"/* > /dev/null; stop_mount
  for r in $(seq "$RUNS"); do
    drop_caches; start_mount
    t0=$(date +%s%N)
    dd if="$MNT/$f" of=/dev/null bs=1M status=none
    t1=$(date +%s%N)
    stop_mount
    echo "run $r: $(( (100 << 20) / ((t1 - t0) / 1000) )) MB/s"
  done | tee "$W/sr"
  echo "median: $(awk '{print $3}' "$W/sr" | median) MB/s"
}
echo "== sequential read, 100 MiB incompressible, warm ciphertext cache"
seq_read noise.bin
echo "== sequential read, 100 MiB text, warm ciphertext cache"
seq_read text.txt

echo "== random 4 KiB reads of cached chunks"
start_mount
cat "$MNT/noise.bin" > /dev/null
drop_caches
python3 - "$MNT/noise.bin" <<'PY'
import os, random, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
size = os.fstat(fd).st_size
random.seed(1)
offs = [random.randrange(size // 4096) * 4096 for _ in range(50000)]
t0 = time.perf_counter()
for o in offs:
    os.pread(fd, 4096, o)
dt = time.perf_counter() - t0
print(f"{len(offs) / dt:,.0f} IOPS ({len(offs)} reads, {dt:.2f} s; page cache dropped first)")
PY
rss=$(awk '/VmHWM/ {print $2}' /proc/$MPID/status)
stop_mount
echo "== mount process peak RSS: $((rss / 1024)) MiB (cache budget 256 MiB)"
tail -2 "$W/out"
