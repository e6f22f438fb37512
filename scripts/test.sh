#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it: installs
# what the build and the tests need, builds in build/, runs ctest; then the
# same suite again under ASan+UBSan (build-asan/) and under valgrind, then
# every libFuzzer harness briefly (scripts/fuzz.sh, build-fuzz/), then the
# deployment tests in containers (tests/deploy/run.sh: the image, compose +
# Prometheus, replicas behind HAProxy, kube play, KServe, and the README's
# two commands on a fresh Debian 12; skipped, loudly, where podman cannot
# run). Skip the slow passes with COMROPE_QUICK=1 (not what CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build test
tests/console/install.sh # npm packages of the console's browser test
jobs=$(nproc)

# The C sources in .clang-format's style (scripts/format.sh; a few seconds)
if [ -f .clang-format ] && command -v clang-format >/dev/null; then
  echo "== format: scripts/format.sh --check"
  scripts/format.sh --check
fi

echo "== build (RelWithDebInfo) and ctest"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCOMROPE_BUILD_TESTS=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
# ctest counts a skipped test as passed: say it out loud
if grep -q "SKIPPED: Chromium" build/Testing/Temporary/LastTest.log 2>/dev/null; then
  echo "#### WARNING: console_browser was SKIPPED: Chromium cannot start here (build/Testing/Temporary/LastTest.log)"
fi

if [ "${COMROPE_QUICK:-0}" = 1 ]; then exit 0; fi

echo "== ASan + UBSan build and ctest"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCOMROPE_SANITIZE=ON -DCOMROPE_BUILD_TESTS=ON >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs"

# One binary per core at a time (valgrind runs a program's threads one at
# a time): about 8 minutes instead of 15 on 2 cores. The slowest go first
# (test_gemm about 5 minutes, test_kernels 4, test_parity 3.5, test_accuracy
# 2; the rest seconds), so that the two queues end together.
echo "== valgrind (memcheck) on every unit-test binary, $jobs at a time"
valgrind_order() {
  local t slow=" test_gemm test_kernels test_parity test_accuracy "
  for t in $slow; do [ -x "build/tests/$t" ] && echo "build/tests/$t"; done
  for t in build/tests/test_*; do
    [ -x "$t" ] && [[ $slow != *" ${t##*/} "* ]] && echo "$t"
  done
  return 0
}
# Each report to a file of its own (two at once would interleave), shown
# whole when its binary fails.
# shellcheck disable=SC2016  # $1 is the inner shell's
valgrind_order | xargs -P "$jobs" -I{} bash -c 'echo "-- valgrind $1"; log=build/valgrind-${1##*/}.log
  CK_FORK=no valgrind -q --log-file="$log" --error-exitcode=1 --leak-check=full \
    --errors-for-leak-kinds=definite --suppressions=tests/valgrind.supp "$1" >/dev/null ||
    { cat "$log"; echo "#### valgrind FAILED: $1 (report above, $log)"; exit 1; }' _ {}

# Every parser under libFuzzer (tests/fuzz) for a short while: 20 s each,
# about 4 minutes in all with the build (the low end of 20-30 s: the
# container stage below makes CI's 45 minutes tight). clang and its fuzzer
# runtime are in the test group of scripts/packages.txt.
echo "== fuzz: each harness for ${COMROPE_FUZZ_SECONDS:-20} s"
if scripts/fuzz.sh --check; then
  scripts/fuzz.sh "${COMROPE_FUZZ_SECONDS:-20}"
else
  echo "== fuzz: SKIPPED: clang's libFuzzer runtime is missing (apt-get install clang libclang-rt-14-dev)"
fi

echo "== deployment tests in containers (tests/deploy/run.sh)"
tests/deploy/run.sh build/comrope-serve
echo "== all tests passed"
