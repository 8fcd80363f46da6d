#!/usr/bin/env bash
# Run a command on what an AVX2 CPU (AMD Zen, Intel before AVX-512) runs, on a machine with AVX-512: fastnn built
# in a scratch copy of the tree with FASTNN_BUILD_MAX_ISA=avx2 (no AVX-512 loops or kernels; the in-place build is
# left alone), OpenBLAS on its Haswell kernels (the ones it picks on AVX2 CPUs, Zen included), and the peers of
# the benchmark capped the same way (torch's own kernels, MKL, oneDNN, XLA).
#
#   tools/avx2_path.sh [command...]     default: python -m fastnn bench --threads 1
#   tools/avx2_path.sh python -m pytest -q -p no:cacheprovider tests      the suite on the AVX2 path
#
# Environment: AVX2_DIR=<dir> build there and keep it (a second run reuses the build; default: a temp dir,
# removed at the end); JOBS=2 (parallel compiles).  ~2 min to build on 2 cores.  What it cannot reproduce: the
# other CPU's caches, clock and memory; an AVX2 machine's own figures stay the reference.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${JOBS:-2}
if [[ -n "${AVX2_DIR:-}" ]]; then
    work=$AVX2_DIR; mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-avx2.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
tree=$work/tree
mkdir -p "$tree"

# The tracked and untracked-but-not-ignored files (never the in-place .so files); setup.py rebuilds what changed.
(cd "$root" && git ls-files -co --exclude-standard | while read -r f; do [[ -f $f ]] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -C "$tree" -xpf -

echo "== building with FASTNN_BUILD_MAX_ISA=avx2 in $tree (log: $work/build.log)" >&2
(cd "$tree" && FASTNN_BUILD_MAX_ISA=avx2 python setup.py build_ext --inplace -j "$jobs") > "$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log"; echo "avx2_path: BUILD FAILED" >&2; exit 1; }

export OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_cpu_max_isa=AVX2"
export PYTHONPATH="$tree${PYTHONPATH:+:$PYTHONPATH}"
isa=$(cd "$tree" && python -c "from fastnn._core import _threads as t; print(t.isa_path(), '/', t.blas_corename())")
echo "== fastnn ISA path / OpenBLAS core: $isa" >&2
case $isa in
    avx2+fma*Haswell) ;;
    *) echo "avx2_path: expected the avx2+fma path on OpenBLAS's Haswell kernels, got '$isa'" >&2; exit 1 ;;
esac

(( $# )) || set -- python -m fastnn bench --threads 1
cd "$tree" && "$@"
