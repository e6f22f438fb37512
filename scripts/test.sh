#!/usr/bin/env bash
# The whole test suite, as the README's second command runs it: installs
# what the build and the tests need, builds in build/, runs ctest; then the
# same suite again under ASan+UBSan (build-asan/), the threaded tests under
# ThreadSanitizer (build-tsan/), the unit tests under valgrind, then
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

# ThreadSanitizer (COMROPE_TSAN, build-tsan/): the tests whose threads
# share state -- the batcher's workers and reaper, the engine's pools and
# oneDNN's pieces, and the daemon under load with models loaded, unloaded
# and rescanned, scraped, drained, and fed hostile clients, the log's
# writer thread (test_log, and log_stall with stderr not read), and the
# HTTPS certificate pairs that handshakes hold and closing connections
# release (test_tls, and tls under load and rotation). Not the whole
# suite: under TSan it would add 15 minutes; these add 2.5 to 3.5 (build
# 30 s, tests 2 to 3 min, measured on 2 busy cores; test_accuracy alone
# would take 100 s, and shares no state between threads).
# A race report fails the stage however its test ended: every report goes
# to a file under build-tsan/tsan-reports, checked afterwards (a daemon
# killed with SIGKILL, or whose exit status a test does not read, still
# counts), and a process that reported exits 66 (TSan's exitcode), which
# fails its unit test and every integration test that checks the daemon's
# exit status. Not halt_on_error: a daemon that dies at its first report
# leaves its test polling for a state that never comes (up to ctest's 300
# s), where running on shows every report of the run and ends as usual.
# tests/tsan.supp says what is suppressed and why (only oneDNN's
# internals); OpenBLAS runs on one thread, as the engine sets it (its own
# pool synchronizes in ways TSan cannot see, and none of ours uses it).
echo "== ThreadSanitizer build and the threaded tests"
tsan_tests=(test_batcher test_metrics test_log test_context test_gemm_avx2 test_gemm_onednn test_parity_fp32
  test_parity_onednn integration_races integration_load integration_shutdown integration_loading
  integration_repository integration_clients integration_hardening integration_limits
  integration_prometheus integration_triton integration_daemon integration_log_stall test_tls integration_tls)
tsan_regex="^($(IFS='|'; echo "${tsan_tests[*]}"))\$"
cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=Debug -DCOMROPE_TSAN=ON -DCOMROPE_BUILD_TESTS=ON >/dev/null
cmake --build build-tsan -j "$jobs"
# every name above is a test (a renamed one would drop out unseen)
tsan_found=$(ctest --test-dir build-tsan -N -R "$tsan_regex" | sed -n 's/^Total Tests: //p')
[ "$tsan_found" = "${#tsan_tests[@]}" ] ||
  { echo "#### TSan stage: $tsan_found of the ${#tsan_tests[@]} tests it names exist"; exit 1; }
rm -rf build-tsan/tsan-reports
mkdir -p build-tsan/tsan-reports
tsan_failed=0
TSAN_OPTIONS="halt_on_error=0:second_deadlock_stack=1:suppressions=$PWD/tests/tsan.supp:log_path=$PWD/build-tsan/tsan-reports/report" \
  OPENBLAS_NUM_THREADS=1 ctest --test-dir build-tsan --output-on-failure -j "$jobs" -R "$tsan_regex" |
  tee build-tsan/tsan-ctest.log || tsan_failed=1
if [ -n "$(ls -A build-tsan/tsan-reports)" ]; then
  cat build-tsan/tsan-reports/*
  echo "#### ThreadSanitizer reported (above; build-tsan/tsan-reports)"
  tsan_failed=1
fi
# a part this CPU lacks passes as "Skipped", a test that passes without
# some of its checks prints "skip...": both said out loud
if grep -q '\*\*\*Skipped' build-tsan/tsan-ctest.log; then
  echo "#### WARNING: under TSan these were SKIPPED (this CPU or build lacks what they test):"
  grep '\*\*\*Skipped' build-tsan/tsan-ctest.log
fi
if grep -iq '^skip' build-tsan/Testing/Temporary/LastTest.log; then
  echo "#### WARNING: under TSan these checks were skipped:"
  grep -i '^skip' build-tsan/Testing/Temporary/LastTest.log
fi
[ "$tsan_failed" = 0 ] || { echo "#### ThreadSanitizer stage FAILED"; exit 1; }

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
