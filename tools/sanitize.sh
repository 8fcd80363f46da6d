#!/usr/bin/env bash
# Build fastnn's compiled core with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of the tree
# (the in-place build is left alone) and run the test suite (kernel and model tests) under it.
#
#   tools/sanitize.sh [pytest args...]      default: the suite (TESTS below); ~4 min build, ~3 min tests on 2 cores
#
# Environment: SANITIZE_DIR=<dir> build there and keep it (default: a temp dir, removed at the end);
# SANITIZERS=address,undefined (the -fsanitize list); JOBS=2 (parallel compiles).
# Exit status: 0 when the tests pass and no sanitizer reported anything, 1 otherwise.  Python itself is not
# instrumented: libasan is preloaded so that its allocator and interceptors are in place before the extensions
# load; leak detection is off (CPython keeps objects alive to the end by design).  Before the tests, two canaries
# (a heap overflow and a signed overflow in a throwaway instrumented library) prove that reports are caught.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitizers=${SANITIZERS:-address,undefined}
jobs=${JOBS:-2}
# The whole suite, torch parity included (torch runs fine under the preloaded runtime), less the RSS benchmark
# test (ASan's shadow memory and quarantine make resident-set numbers meaningless).
TESTS=(tests --ignore=tests/test_bench_rss.py)

if [[ -n "${SANITIZE_DIR:-}" ]]; then
    work=$SANITIZE_DIR; mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-sanitize.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
tree=$work/tree
logs=$work/logs
rm -rf "$tree" "$logs"; mkdir -p "$tree" "$logs"

# The tracked and untracked-but-not-ignored files, plus the generated .c (kept so nothing is re-cythonized):
# never the in-place .so files.
(cd "$root" && { git ls-files -co --exclude-standard; ls fastnn/_core/*.c 2>/dev/null || true; } \
    | sort -u | while read -r f; do [[ -f $f ]] && printf '%s\0' "$f"; done | tar --null -T - -cf -) \
    | tar -C "$tree" -xpf -

echo "== building with -fsanitize=$sanitizers in $tree (log: $logs/build.log)"
(cd "$tree" && FASTNN_SANITIZE=$sanitizers python setup.py build_ext --inplace -j "$jobs") > "$logs/build.log" 2>&1 \
    || { tail -n 40 "$logs/build.log"; echo "sanitize: BUILD FAILED"; exit 1; }
n_so=$(ls "$tree"/fastnn/_core/*.so | wc -l)
n_pyx=$(ls "$tree"/fastnn/_core/*.pyx | wc -l)
n_cc=$(grep -c -- "-fsanitize=$sanitizers" "$logs/build.log" || true)
if (( n_so != n_pyx )) || (( n_cc < n_pyx )); then
    echo "sanitize: expected $n_pyx instrumented extensions, got $n_so .so, $n_cc compile/link lines with -fsanitize"
    exit 1
fi
for so in "$tree"/fastnn/_core/*.so; do
    # (grep reads all of nm's output: with -q it would stop early, and pipefail would see nm's SIGPIPE)
    if [[ $sanitizers == *address* ]] && ! nm -D "$so" | grep __asan_report > /dev/null; then
        echo "sanitize: $so carries no ASan instrumentation"; exit 1
    fi
done
echo "== $n_so extensions built and instrumented"

preload=$(gcc -print-file-name=libasan.so)
[[ $sanitizers == *undefined* ]] && preload="$preload $(gcc -print-file-name=libubsan.so)"
(( $# )) && args=("$@") || args=("${TESTS[@]}")

# LD_PRELOAD goes to the python commands only: gcc, grep and tee under libasan would run its leak checker.
# Reports go to the process's stderr (UBSan ignores log_path when it runs inside the ASan runtime): pytest runs
# with --capture=sys, which captures Python's sys.stderr but leaves file descriptor 2 to the log below, so a
# report from a passing test is not swallowed.  UBSan goes on after a report (all of them are collected); ASan
# stops the process at its first one.
asan_opts="detect_leaks=0:halt_on_error=1:strict_string_checks=0"
ubsan_opts="print_stacktrace=1:halt_on_error=0"

# Canaries: the same runtime setup must report a heap overflow and a signed overflow, or a clean run means nothing.
cat > "$work/canary.c" <<'C'
#include <stdlib.h>
int fnn_canary_heap(int i) { int *p = malloc(4 * sizeof(int)); int v = p[i]; free(p); return v; }
int fnn_canary_int(int a) { return a + 1; }
C
gcc -shared -fPIC -O1 -g -fsanitize="$sanitizers" "$work/canary.c" -o "$work/canary.so"
canary() {  # $1: function, $2: argument, $3: what the report must say
    local out
    out=$(LD_PRELOAD="$preload" ASAN_OPTIONS="$asan_opts" UBSAN_OPTIONS="$ubsan_opts" \
        python -c "import ctypes, sys; ctypes.CDLL(sys.argv[1]).$1($2)" "$work/canary.so" 2>&1 || true)
    if ! grep -- "$3" <<< "$out" > /dev/null; then
        echo "sanitize: the $1 canary was not reported ('$3'): the sanitizer setup is broken"; exit 1
    fi
}
[[ $sanitizers == *address* ]] && canary fnn_canary_heap 4 "ERROR: AddressSanitizer: heap-buffer-overflow"
[[ $sanitizers == *undefined* ]] && canary fnn_canary_int 2147483647 "runtime error: signed integer overflow"
echo "== canaries reported as expected"

echo "== pytest ${args[*]} (log: $logs/pytest.log)"
set +e
(cd "$tree" && LD_PRELOAD="$preload" \
 ASAN_OPTIONS="$asan_opts" UBSAN_OPTIONS="$ubsan_opts" \
 PYTHONPATH="$tree" \
 python -m pytest -q -p no:cacheprovider --capture=sys "${args[@]}") 2>&1 | tee "$logs/pytest.log"
rc=${PIPESTATUS[0]}
set -e

pattern='ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:'
n_reports=$(grep -cE "$pattern" "$logs/pytest.log" || true)
echo
echo "==================== sanitize summary ===================="
echo "sanitizers: $sanitizers; extensions: $n_so; pytest exit status: $rc"
grep -E '(passed|failed|error).* in [0-9.]+s' "$logs/pytest.log" | tail -n 1 || true
if (( n_reports > 0 )); then
    echo "SANITIZER REPORTS ($n_reports), by kind and place:"
    grep -E "$pattern|^SUMMARY: " "$logs/pytest.log" | sort | uniq -c | sort -rn | head -n 30
    if [[ -z "${SANITIZE_DIR:-}" ]]; then
        mkdir -p "$root/build"; cp "$logs/pytest.log" "$root/build/sanitize-pytest.log"
        echo "(full log with the stack traces: $root/build/sanitize-pytest.log)"
    fi
    echo "RESULT: FAIL (sanitizer reports)"
    exit 1
fi
if (( rc != 0 )); then
    echo "RESULT: FAIL (tests failed, no sanitizer report)"
    exit 1
fi
echo "RESULT: OK (no sanitizer report, tests passed)"
