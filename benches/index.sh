#!/usr/bin/env bash
# `lazycrypt index` throughput on one core (issue 17: ≥ 0.5 GB/s of layer),
# from an `oci:` layout so no registry is in the way:
#   - a 200 MiB incompressible layer (random bytes);
#   - a text layer (2,000 files of word lines, about 137 MiB of tar),
#     bound by inflation: for comparison, `gzip -dc` and (if installed)
#     `libdeflate-gunzip` of the same blob on the same core.
# Each layer is built plain, encrypted to a JWE recipient (the same
# tar+gzip layers skopeo writes), then indexed RUNS times with --force;
# the figure is the indexer's own per-layer line (its time and GB/s).
#
#   RUNS=3 ./benches/index.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CORE=${CORE:-0}
for c in openssl python3 taskset gzip; do
  command -v "$c" >/dev/null || { echo "missing $c" >&2; exit 1; }
done
cargo build --release --quiet
LC=$PWD/target/release/lazycrypt
W=$(mktemp -d /tmp/lazycrypt-index-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT

mkdir -p "$W/noise" "$W/text"
head -c $((200 << 20)) /dev/urandom > "$W/noise/noise.bin"
python3 - "$W/text" <<'PY'
import os, random, sys
random.seed(7)
words = ["lazy", "crypt", "chunk", "verify", "decrypt", "overlay", "snapshot",
         "layer", "index", "kernel", "def", "return", "self", "import", "class"]
for i in range(2000):
    with open(os.path.join(sys.argv[1], f"m{i}.py"), "w") as f:
        n, lim = 0, random.randrange(20000, 120000)
        while n < lim:
            line = " ".join(random.choice(words) for _ in range(10)) + f" {random.randrange(10**6)}\n"
            f.write(line); n += len(line)
PY
openssl genrsa -out "$W/priv.pem" 2048 2>/dev/null
openssl rsa -in "$W/priv.pem" -pubout -out "$W/pub.pem" 2>/dev/null
chmod 600 "$W/priv.pem"
for k in noise text; do
  "$LC" build --layer "$W/$k" "oci:$W/$k-plain:v1" >/dev/null
  "$LC" encrypt -r "jwe:$W/pub.pem" "oci:$W/$k-plain:v1" "oci:$W/$k:v1" >/dev/null
done

for k in noise text; do
  for r in $(seq "$RUNS"); do
    line=$(taskset -c "$CORE" "$LC" index --force --key "$W/priv.pem" "oci:$W/$k:v1" | grep -o 'artifact blobs.*')
    echo "$k run $r: $line"
  done
done
blob=$(ls -S "$W/text-plain/blobs/sha256/" | head -1)
size=$(stat -c %s "$W/text-plain/blobs/sha256/$blob")
# The inflaters beside it: GNU gzip, and libdeflate's (the fastest DEFLATE
# decoder Debian ships, package libdeflate-tools; whole-buffer, so an upper
# bound for any streaming reader), when installed.
inflaters=("gzip -dc")
command -v libdeflate-gunzip >/dev/null && inflaters+=("libdeflate-gunzip -c")
for inflater in "${inflaters[@]}"; do
  for r in $(seq "$RUNS"); do
    s=$(date +%s%N)
    # shellcheck disable=SC2086 # the inflater's words are its command line
    taskset -c "$CORE" $inflater < "$W/text-plain/blobs/sha256/$blob" > /dev/null
    e=$(date +%s%N)
    python3 -c "print('text run $r: $inflater alone: %.2fs, %.3f GB/s of layer' % (($e-$s)/1e9, $size/(($e-$s)/1e9)/1e9))"
  done
done
