#!/usr/bin/env bash
# Builds the libFuzzer harnesses (tests/fuzz, CC=clang, COMROPE_FUZZ=ON) in
# build-fuzz/ and runs each for SECONDS (default 60), one after the other.
#
#   scripts/fuzz.sh [SECONDS] [HARNESS...]      (default: every harness)
#   FUZZ_RUNS=1000000 scripts/fuzz.sh 1800      (also stop a harness after N inputs)
#   scripts/fuzz.sh --check                     (exit 0 if clang's fuzzer runtime works)
#
# Each harness starts from its committed seeds (tests/fuzz/corpus/<h>/, read
# only) and from what earlier runs found (build-fuzz/runs/<h>/corpus/), with
# its dictionary tests/fuzz/<h>.dict when there is one.
# Progress: libFuzzer's pulse lines. At the end a summary line per harness:
# executions, seconds, coverage (cov/ft from libFuzzer's last line), corpus
# size. Crashing inputs are saved as build-fuzz/crashes/<h>-crash-*
# (leak-*, timeout-*, oom-*); the exit status is non-zero if any harness
# failed. The full output of each is build-fuzz/runs/<h>/log.
set -euo pipefail
cd "$(dirname "$0")/.."

HARNESSES=(fuzz_v1 fuzz_v2 fuzz_query fuzz_image fuzz_safetensors fuzz_checkpoint fuzz_model_config
           fuzz_npy fuzz_config fuzz_http)

fuzzer_runtime_works() {
    command -v clang >/dev/null || return 1
    local tmp
    tmp=$(mktemp -d)
    printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' \
        > "$tmp/t.c"
    local rc=0
    clang -fsanitize=fuzzer,address,undefined "$tmp/t.c" -o "$tmp/t" 2>/dev/null || rc=1
    rm -rf "$tmp"
    return $rc
}

if [ "${1:-}" = --check ]; then
    fuzzer_runtime_works
    exit
fi
if ! fuzzer_runtime_works; then
    echo "fuzz.sh: clang with libFuzzer (-fsanitize=fuzzer) is missing: install clang and libclang-rt-14-dev" \
         "(scripts/install-deps.sh test)" >&2
    exit 2
fi

seconds=${1:-60}
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then HARNESSES=("$@"); fi
runs=${FUZZ_RUNS:--1}
jobs=$(nproc)

echo "== fuzz: building the harnesses (build-fuzz/, clang, ASan + UBSan + libFuzzer)"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMROPE_FUZZ=ON \
    -DCOMROPE_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j "$jobs" --target "${HARNESSES[@]}"

mkdir -p build-fuzz/crashes
summary=()
failed=0
for h in "${HARNESSES[@]}"; do
    dir=build-fuzz/runs/$h
    mkdir -p "$dir/corpus"
    echo "== fuzz: $h for ${seconds} s (seeds tests/fuzz/corpus/$h, log $dir/log)"
    start=$(date +%s)
    rm -f "$dir/rc"
    dict=()
    if [ -f "tests/fuzz/$h.dict" ]; then dict=(-dict="tests/fuzz/$h.dict"); fi
    # MHD's error log (one line per malformed request of fuzz_http) is left
    # out of the log; libFuzzer's and the sanitizers' lines are kept.
    { ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
      UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "build-fuzz/tests/fuzz/$h" -max_total_time="$seconds" -runs="$runs" -timeout=30 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="build-fuzz/crashes/$h-" "${dict[@]}" \
        "$dir/corpus" "tests/fuzz/corpus/$h" 2>&1
      echo $? > "$dir/rc"; } |
        grep --line-buffered -v -E "^(Error processing request|Connection was closed by remote side|Failed to parse|Closing connection)" \
        > "$dir/log" &
    pid=$!
    # progress: libFuzzer's pulse lines as they come
    tail -n +1 -F --pid=$pid "$dir/log" 2>/dev/null |
        grep --line-buffered -E "pulse|INITED|DONE|ERROR|SUMMARY|Test unit written" | sed -u "s/^/  $h: /" || true
    wait $pid || true
    rc=$(cat "$dir/rc" 2>/dev/null || echo 1)
    elapsed=$(( $(date +%s) - start ))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log" | tail -1)
    last=$(grep -E "^#[0-9]+" "$dir/log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p' <<<"$last")
    status=ok
    if [ "$rc" != 0 ]; then
        status=FAILED
        failed=1
        echo "  $h: FAILED; crashing inputs:"
        find build-fuzz/crashes -name "$h-*" | sed 's/^/    /'
        grep -E "^==[0-9]+==|^SUMMARY|runtime error" "$dir/log" | head -5 | sed 's/^/    /'
    fi
    summary+=("$(printf '%-18s %-6s %10s execs %5s s  cov %5s  ft %6s  corpus %s' "$h" "$status" \
        "${execs:-?}" "$elapsed" "${cov:-?}" "${ft:-?}" "${corp:-?}")")
done

echo "== fuzz: summary (${seconds} s each)"
printf '%s\n' "${summary[@]}"
if [ "$failed" != 0 ]; then
    echo "== fuzz: FAILED (crashing inputs in build-fuzz/crashes/)"
    exit 1
fi
echo "== fuzz: no crash"
