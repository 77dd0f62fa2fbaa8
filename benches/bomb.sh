#!/usr/bin/env bash
# A decompression bomb through `lazycrypt mount` (run as root): an encrypted
# image whose one gzip layer is ~10 MiB of blob and 10 GiB of tar stream (a
# file of zeros), mounted under a 64 MiB cache budget. Reports the blob's
# size, the time to index it, the mount process's peak RSS (VmHWM) against
# the budget, and checks the file's last bytes read back as zeros.
#
#   ./benches/bomb.sh [GiB]        (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
GIB=${1:-10}
BUDGET=64M
for c in openssl skopeo; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
cargo build --release --quiet
LC=$PWD/target/release/lazycrypt
W=$(mktemp -d /tmp/lazycrypt-bomb.XXXXXX)
MNT=$W/mnt
cleanup() {
  $LC umount --run-dir "$W/run" "$MNT" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/src" "$MNT"
# Written out (a sparse file would become a sparse tar entry, which
# lazycrypt refuses): the disk holds it until the image is built.
head -c "${GIB}G" /dev/zero > "$W/src/zeros.bin"
openssl genrsa -out "$W/key.pem" 2048 2>/dev/null
openssl rsa -in "$W/key.pem" -pubout -out "$W/pub.pem" 2>/dev/null
$LC build --no-gzip --layer "$W/src" "oci:$W/tar:v1" >/dev/null
rm -rf "$W/src"
# gzip -9: zeros deflate about 1000:1, so 10 GiB is a ~10 MiB blob.
skopeo copy -q --dest-compress --dest-compress-format gzip --dest-compress-level 9 \
  "oci:$W/tar:v1" "oci:$W/plain:v1"
rm -rf "$W/tar"
$LC encrypt -r "jwe:$W/pub.pem" "oci:$W/plain:v1" "oci:$W/enc:v1" >/dev/null
rm -rf "$W/plain"
blob=$(find "$W/enc/blobs" -type f -size +1M -printf '%s\n' | sort -n | tail -1)

t0=$(date +%s.%N)
$LC mount --key "$W/key.pem" --cache-size "$BUDGET" --root "$W/state" \
  --run-dir "$W/run" "oci:$W/enc:v1" "$MNT" > "$W/mount.log" 2>&1 &
pid=$!
for _ in $(seq 6000); do
  mountpoint -q "$MNT" && break
  kill -0 "$pid" 2>/dev/null || { cat "$W/mount.log" >&2; exit 1; }
  sleep 0.1
done
t1=$(date +%s.%N)
size=$(stat -c %s "$MNT/zeros.bin")
tail=$(tail -c 4096 "$MNT/zeros.bin" | tr -d '\0' | wc -c)
mid=$(dd if="$MNT/zeros.bin" bs=1M skip=$((GIB * 512)) count=4 2>/dev/null | tr -d '\0' | wc -c)
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
printf 'blob: %d bytes; tar stream file: %d bytes (%d GiB of zeros)\n' "$blob" "$size" "$GIB"
printf 'mount (fetch + verify + index): %.1f s\n' "$(echo "$t1 - $t0" | bc)"
printf 'peak RSS of lazycrypt mount: %d MiB (cache budget %s, target <= budget + 64 MiB)\n' \
  $((hwm / 1024)) "$BUDGET"
if [ "$tail" -ne 0 ] || [ "$mid" -ne 0 ]; then
  echo "WRONG BYTES: non-zero bytes read back" >&2
  exit 1
fi
echo "last 4 KiB and 4 MiB from the middle read back as zeros"
