"""Build of fastnn's compiled core.

Every ``fastnn/_core/*.pyx`` becomes one extension, compiled ``-O3`` for the baseline ISA of the target
(set ``FASTNN_NATIVE=1`` for a local ``-march=native`` build, never for a distributed wheel), with OpenMP
when the compiler has it, and linked to the BLAS of the ``scipy-openblas32`` package.  At run time the
extension finds that library because ``fastnn/__init__.py`` imports ``scipy_openblas32`` first, which
loads it into the process; a relative rpath covers a plain install as a second way.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from glob import glob

import scipy_openblas32
from Cython.Build import cythonize
from setuptools import Extension, setup


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
    )
    for pyx in sorted(glob(os.path.join("fastnn", "_core", "*.pyx")))
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": "3", "embedsignature": True},
    ),
)
