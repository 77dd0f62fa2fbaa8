#!/usr/bin/env bash
# Whole-image decrypt, side by side in one run: `lazycrypt decrypt` vs
# `skopeo copy --decryption-key`, OCI layout -> OCI layout, on the same
# skopeo-encrypted three-layer image (default 200 MiB of incompressible data).
# Prints wall time and peak RSS per run and the median of RUNS runs.
#
#   SIZE_MIB=200 RUNS=5 ./benches/decrypt_vs_skopeo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-200}
RUNS=${RUNS:-5}
for c in skopeo openssl /usr/bin/time; do
  command -v "$c" >/dev/null || { echo "missing $c (apt-get install skopeo openssl time)" >&2; exit 1; }
done
cargo build --release --quiet
LC=target/release/lazycrypt
W=$(mktemp -d /tmp/lazycrypt-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

per=$((SIZE_MIB / 3))
for i in 0 1 2; do
  mkdir -p "$W/rootfs/l$i"
  head -c "$((per * 1024 * 1024))" /dev/urandom > "$W/rootfs/l$i/data.bin"
done
openssl genrsa -out "$W/key.pem" 2048 2>/dev/null
openssl rsa -in "$W/key.pem" -pubout -out "$W/pub.pem" 2>/dev/null
$LC build --no-gzip --layer "$W/rootfs/l0" --layer "$W/rootfs/l1" --layer "$W/rootfs/l2" "oci:$W/plain:v1" >/dev/null
skopeo --insecure-policy copy -q --encryption-key "jwe:$W/pub.pem" "oci:$W/plain:v1" "oci:$W/enc:v1"
du -sh "$W/enc" | awk '{print "encrypted image: " $1}'

measure() { # name, command...
  local name=$1; shift
  local times=() rss=()
  for r in $(seq "$RUNS"); do
    rm -rf "$W/out"
    /usr/bin/time -f "%e %M" -o "$W/t" "$@" >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    read -r t m < "$W/t"
    times+=("$t"); rss+=("$m")
    printf '%-10s run %d: %6.2f s  %7d KiB peak RSS\n' "$name" "$r" "$t" "$m"
  done
  local med; med=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  local maxrss; maxrss=$(printf '%s\n' "${rss[@]}" | sort -g | tail -1)
  echo "$name $med $maxrss" >> "$W/summary"
}

measure lazycrypt $LC decrypt --key "$W/key.pem" "oci:$W/enc:v1" "oci:$W/out:v1"
measure skopeo skopeo --insecure-policy copy -q --decryption-key "$W/key.pem" "oci:$W/enc:v1" "oci:$W/out:v1"

echo
echo "| tool | median wall (s) | MB/s | max peak RSS (MiB) |"
echo "|---|---|---|---|"
bytes=$((per * 3 * 1024 * 1024))
while read -r name med rss; do
  awk -v n="$name" -v m="$med" -v r="$rss" -v b="$bytes" 'BEGIN{printf "| %s | %.2f | %.0f | %.1f |\n", n, m, b/m/1e6, r/1024}'
done < "$W/summary"
awk 'NR==1{l=$2} NR==2{s=$2} END{printf "\nskopeo / lazycrypt: %.1fx\n", s/l}' "$W/summary"
