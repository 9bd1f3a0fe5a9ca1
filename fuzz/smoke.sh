#!/usr/bin/env bash
# Smoke-runs every captp fuzz target for a short time (30 s each by default), one at a
# time, starting from the committed seeds. `.ci/run` ends with it (20 s per target). It
# needs the nightly toolchain and cargo-fuzz and installs neither: without them it
# prints "skipped: ..." and exits 0. A crash, a timeout or an out-of-memory fails the
# script; the input that caused it is left in fuzz/artifacts/<target>/.
#
#   fuzz/smoke.sh                 every target, 30 s each
#   FUZZ_SECONDS=600 fuzz/smoke.sh session message
#                                 chosen targets, 10 minutes each (one after another)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(frame message sturdy session)
if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
fi
SECONDS_EACH="${FUZZ_SECONDS:-30}"

if ! command -v cargo >/dev/null 2>&1; then
    echo "skipped: cargo is not installed"
    exit 0
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipped: the nightly toolchain is not installed (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi

export CARGO_TERM_COLOR=never
# -a: debug assertions on, so arithmetic overflow in captp is a crash too.
echo "== building the fuzz targets =="
cargo +nightly fuzz build -a

status=0
summary=()
for target in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    if [ -d "fuzz/seeds/$target" ]; then
        cp -n "fuzz/seeds/$target/"* "fuzz/corpus/$target/" 2>/dev/null || true
    fi
    echo "== fuzzing $target for ${SECONDS_EACH} s =="
    log="$(mktemp)"
    set +e
    cargo +nightly fuzz run -a "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 2>&1 | tee "$log" |
        grep -E '^(INFO: seed|#[0-9]+[[:space:]]+(INITED|DONE)|Done [0-9]+ runs|==[0-9]+==|SUMMARY|stat::number_of_executed_units|thread .* panicked)'
    rc="${PIPESTATUS[0]}"
    set -e
    runs="$(grep -Eo 'stat::number_of_executed_units: [0-9]+' "$log" | grep -Eo '[0-9]+$' || true)"
    # libFuzzer prints "Done N runs" only when it stops at the time limit without a
    # finding; a crash, timeout or out-of-memory leaves an artifact and a failed status.
    if [ "$rc" -eq 0 ] && grep -q '^Done [0-9]* runs' "$log"; then
        summary+=("$target: ok, ${runs:-?} executions in ${SECONDS_EACH} s")
    else
        summary+=("$target: FAILED with status $rc (see fuzz/artifacts/$target/)")
        status=1
    fi
    rm -f "$log"
done

echo "== fuzz summary =="
printf '%s\n' "${summary[@]}"
exit "$status"
