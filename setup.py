"""Build of fastnn's compiled core.

Every ``fastnn/_core/*.pyx`` becomes one extension (plus ``_cyutility``, Cython's shared utility code),
compiled ``-O3`` for the baseline ISA of the target (set ``FASTNN_NATIVE=1`` for a local ``-march=native``
build, never for a distributed wheel), with OpenMP when the compiler has it, and linked to the BLAS of the
``scipy-openblas32`` package.  At run time the extension finds that library because ``fastnn/__init__.py``
imports ``scipy_openblas32`` first, which loads it into the process; a relative rpath covers a plain install
as a second way.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import Cython
import scipy_openblas32
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.modified import newer_group


def _compiler_has_openmp():
    """Compile and link a tiny OpenMP program with the compiler Python was built with."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    src = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n<1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "t.c")
        with open(path, "w") as f:
            f.write(src)
        res = subprocess.run(cc + ["-fopenmp", path, "-o", os.path.join(tmp, "t")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return res.returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


use_openmp = os.environ.get("FASTNN_NO_OPENMP", "") != "1" and _compiler_has_openmp()
if not use_openmp:
    print("fastnn: building WITHOUT OpenMP (kernels run on one thread)", file=sys.stderr)

# -fno-math-errno: sqrt and friends need not set errno (fastnn never reads it), so loops that call them
# (the Adam/RMSprop/Adagrad updates) vectorize: Adam over W1's 235k parameters went from ~5.6 to ~1 ns per element.
# -fno-trapping-math: fastnn never reads the floating-point exception flags either, so gcc may if-convert a
# select whose arms it would otherwise treat as possibly trapping: the float32 tanh loop (a rational approximation
# with clamps and a division, csrc/fnn_math.h) was left scalar ("control flow in loop"), ~45 instructions per
# element, ~15 us of W3's ~33 us step; it vectorizes with it.  No value changes: no reassociation, same operations.
compile_args = ["-O3", "-g0", "-std=c99", "-fno-math-errno", "-fno-trapping-math", "-Wno-unused-function",
                "-Wno-unreachable-code"]
link_args = []
if use_openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
if os.environ.get("FASTNN_NATIVE", "") == "1":
    compile_args.append("-march=native")
# FASTNN_BUILD_MAX_ISA=avx2: runs no AVX-512 code (the FNN_CLONES loops and the FMA kernels stop at AVX2), to
# measure on an AVX-512 machine what an AVX2 CPU runs (benchmarks/README.md); never for a wheel.
_max_isa = os.environ.get("FASTNN_BUILD_MAX_ISA", "")
if _max_isa == "avx2":
    compile_args.append("-DFNN_CLONES_MAX_AVX2")
elif _max_isa:
    sys.exit(f"setup.py: FASTNN_BUILD_MAX_ISA={_max_isa!r}: the only cap is 'avx2'")
# FASTNN_SANITIZE=address,undefined: a checking build for tools/sanitize.sh, never for use or a wheel.  The flags
# must sit in extra_compile_args: distutils puts CFLAGS before them, so "-O3 -g0" here would win over CFLAGS' -O1 -g.
_sanitize = os.environ.get("FASTNN_SANITIZE", "")
if _sanitize:
    compile_args = [a for a in compile_args if a not in ("-O3", "-g0")]
    compile_args += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=" + _sanitize]
    link_args.append("-fsanitize=" + _sanitize)

extensions = [
    Extension(
        "fastnn._core." + os.path.splitext(os.path.basename(pyx))[0],
        [pyx],
        include_dirs=["csrc", scipy_openblas32.get_include_dir()],
        library_dirs=[scipy_openblas32.get_lib_dir()],
        libraries=[scipy_openblas32.get_library()],
        # fastnn/_core/X.so -> site-packages/scipy_openblas32/lib
        runtime_library_dirs=["$ORIGIN/../../scipy_openblas32/lib"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        # a change to any C header rebuilds every extension (they are small; being exact here is not worth it)
        depends=sorted(glob(os.path.join("csrc", "*.h"))),
    )
    for pyx in sorted(glob(os.path.join("fastnn", "_core", "*.pyx")))
]

# Cython's utility code (memoryviews, error handling, type imports: ~20,000 lines of C per module) is generated
# once into this shared module, which the other extensions import, instead of into each of them: half the C to
# compile.
_SHARED = "fastnn._core._cyutility"
extensions.append(Extension(_SHARED, sources=[os.path.join("fastnn", "_core", "_cyutility.c")],
                            extra_compile_args=compile_args, extra_link_args=link_args))


def _jobs():
    """Parallel jobs for cythonize and the C compiler: FASTNN_BUILD_JOBS, else every core this process may use."""
    env = os.environ.get("FASTNN_BUILD_JOBS", "")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# What the compiled files depend on besides fastnn's own sources: a build with other flags (FASTNN_NATIVE=1, a
# sanitizer), another Python, compiler or Cython must not reuse them.
_FLAGS = json.dumps({"compile": compile_args, "link": link_args, "python": sys.version, "cython": Cython.__version__,
                     "cc": os.environ.get("CC") or sysconfig.get_config_var("CC") or ""}, sort_keys=True)
_FLAGS_FILE = os.path.join("fastnn", "_core", ".build-flags.json")
# fastnn's own files that every extension may include or cimport
_OWN_DEPENDS = sorted(glob(os.path.join("fastnn", "_core", "*.pxd")) + glob(os.path.join("csrc", "*.h")))


class ParallelBuildExt(build_ext):
    """build_ext that runs Cython and the C compiler in parallel by default (pip passes no -j), and, for an
    in-place or editable build, reuses an in-place extension that is newer than fastnn's own sources (its .pyx,
    every .pxd and C header) and was built with the same flags, Python, compiler and Cython.

    setuptools' editable install builds in a fresh temporary folder with a freshly installed Cython each time, so
    Cython's own timestamp checks always see newer files: without this, the quick start's second
    ``pip install -e ".[test]"`` ran Cython and compiled everything again.  ``--force`` (or deleting the .so)
    rebuilds."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel:
            self.parallel = _jobs()

    def _inplace_file(self, ext):
        return self._get_inplace_equivalent(self.get_finalized_command("build_py"), ext)

    def _up_to_date(self, ext):
        inplace_file, _ = self._inplace_file(ext)
        return os.path.exists(inplace_file) and not newer_group(list(ext.sources) + _OWN_DEPENDS, inplace_file,
                                                                 missing="newer")

    def run(self):
        reuse = bool(self.inplace or getattr(self, "editable_mode", False)) and not self.force
        if reuse:
            try:
                with open(_FLAGS_FILE) as f:
                    reuse = f.read() == _FLAGS
            except OSError:
                reuse = False
        self._reused = {ext.name for ext in self.extensions if reuse and self._up_to_date(ext)}
        stale = [ext for ext in self.extensions if ext.name not in self._reused]
        # Cython runs here, not when setup.py is imported: making an sdist or reading metadata needs no C files.
        # The finalized Extension objects are kept (setuptools set its own fields on them); they take the
        # generated C sources and the dependencies Cython found.
        if stale:
            generated = {ext.name: ext for ext in cythonize(
                stale,
                nthreads=self.parallel if self.parallel > 1 else 0,
                compiler_directives={"language_level": "3", "embedsignature": True},
                shared_utility_qualified_name=_SHARED,
            )}
            for ext in stale:
                ext.sources = list(generated[ext.name].sources)
                ext.depends = sorted(set(ext.depends) | set(generated[ext.name].depends))
        super().run()
        if self.inplace or getattr(self, "editable_mode", False):
            with open(_FLAGS_FILE, "w") as f:
                f.write(_FLAGS)

    def build_extension(self, ext):
        if ext.name in self._reused:
            inplace_file, regular_file = self._inplace_file(ext)
            os.makedirs(os.path.dirname(regular_file) or ".", exist_ok=True)
            shutil.copy2(inplace_file, regular_file)
            return
        super().build_extension(ext)


setup(cmdclass={"build_ext": ParallelBuildExt}, ext_modules=extensions)
