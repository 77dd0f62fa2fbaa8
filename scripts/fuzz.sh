#!/bin/sh
# Coverage-guided fuzzing of every parser that sees untrusted bytes.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Runs each fuzz target of fuzz/ (all of them by default) for SECONDS, one
# after the other, and prints per target the inputs executed, the coverage
# libFuzzer reached (`cov`: code edges, `ft`: features) and the crashes
# found (panics, aborts, out-of-memory, timeouts). Exits non-zero if any
# target crashed; the crashing inputs are under fuzz/artifacts/TARGET/, to
# be replayed with `cargo +nightly fuzz run TARGET FILE` and turned into a
# regression test of the normal suite.
#
# Needs the nightly toolchain (`rustup toolchain install nightly`);
# installs cargo-fuzz when missing. Each target's corpus (fuzz/corpus/TARGET,
# not committed) starts from seeds the target writes on its first run, and
# grows across runs.
set -eu

secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
case $secs in
'' | *[!0-9]*)
	echo "fuzz.sh: SECONDS must be a number, not $secs" >&2
	exit 2
	;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
	echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
	exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
	echo "fuzz.sh: installing cargo-fuzz" >&2
	cargo install --locked cargo-fuzz
fi

if [ $# -eq 0 ]; then
	cargo +nightly fuzz build >&2
	set -- $(cargo +nightly fuzz list)
else
	for t in "$@"; do
		cargo +nightly fuzz build "$t" >&2
	done
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
printf '%-18s %12s %7s %8s %8s\n' target executions cov ft crashes
for t in "$@"; do
	mkdir -p "corpus/$t" "artifacts/$t"
	before=$(ls "artifacts/$t" | wc -l)
	# -timeout: an input taking 10 s is a hang; -rss_limit_mb also caps
	# single allocations (malloc_limit_mb defaults to it).
	LAZYCRYPT_FUZZ_SEEDS="$root/fuzz/corpus/$t" \
		cargo +nightly fuzz run "$t" "corpus/$t" -- \
		-max_total_time="$secs" -print_final_stats=1 -timeout=10 \
		-rss_limit_mb=2048 \
		>"$logs/$t" 2>&1 || true
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t" | tail -n 1)
	last=$(grep -E '^#[0-9]+' "$logs/$t" | grep ' cov: ' | tail -n 1 || true)
	cov=$(printf '%s\n' "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
	ft=$(printf '%s\n' "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
	crashes=$(($(ls "artifacts/$t" | wc -l) - before))
	if [ -z "$execs" ] && [ "$crashes" -eq 0 ]; then
		# No stats and no artifact: the target did not run at all.
		echo "fuzz.sh: $t did not run:" >&2
		tail -n 20 "$logs/$t" >&2
		crashes=1
	fi
	printf '%-18s %12s %7s %8s %8s\n' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$crashes"
	if [ "$crashes" -ne 0 ]; then
		failed=1
		grep -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|Test unit written to' "$logs/$t" |
			head -n 6 | sed 's/^/    /'
	fi
done
exit "$failed"
