"""The benchmark's machine line: the CPU model, the ISA path of fastnn's runtime dispatch and OpenBLAS's core type,
in the table's header and the chart's subtitle (no timings); the FASTNN_MAX_CPU_ISA cap."""
import os
import subprocess
import sys

import pytest

from fastnn import bench
from fastnn._core import _threads

ISA_PATHS = ("avx512f", "avx2+fma", "avx2", "baseline", "baseline (no runtime dispatch in this build)")


def test_cpu_model_reads_the_first_model_name_of_cpuinfo(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13  64-Core Processor\n\n"
                 "processor\t: 1\nmodel name\t: something else\n")
    assert bench.cpu_model(str(f)) == "AMD EPYC 7B13 64-Core Processor"


def test_cpu_model_falls_back_to_platform(tmp_path, monkeypatch):
    monkeypatch.setattr(bench.platform, "processor", lambda: "x86_64-fallback")
    assert bench.cpu_model(str(tmp_path / "missing")) == "x86_64-fallback"
    f = tmp_path / "cpuinfo"
    f.write_text("processor\t: 0\nmodel name\t:   \n")               # an empty model name: no answer either
    assert bench.cpu_model(str(f)) == "x86_64-fallback"
    monkeypatch.setattr(bench.platform, "processor", lambda: "")
    monkeypatch.setattr(bench.platform, "platform", lambda: "Linux-6.1-x86_64")
    assert bench.cpu_model(str(f)) == "Linux-6.1-x86_64"


def _paths(isa):
    """The kernels' path and the loops' (the same unless FASTNN_MAX_CPU_ISA capped the kernels), and whether the
    build was capped at AVX2 (FASTNN_BUILD_MAX_ISA) on an AVX-512 CPU."""
    if isa.endswith(" in this build)"):
        return isa, isa, False
    kernels, _, notes = isa.partition(" (")
    notes = notes.rstrip(")").split("; ") if notes else []
    loops = [n[len("loops "):] for n in notes if n.startswith("loops ")]
    return kernels, loops[0] if loops else kernels.replace("+fma", ""), "AVX2 build" in notes


def test_isa_path_and_blas_core_type():
    assert _paths(_threads.isa_path())[0] in ISA_PATHS
    core = _threads.blas_corename()
    assert core and core.isprintable()
    # a DYNAMIC_ARCH OpenBLAS names the core it chose in its build description too
    if "DYNAMIC_ARCH" in _threads.blas_config():
        assert core.lower() in _threads.blas_config().lower()


def test_isa_path_agrees_with_cpuinfo_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    isa = _threads.isa_path()
    if isa.startswith("baseline") and "avx2" in flags and " (loops " not in isa:
        assert isa == "baseline (no runtime dispatch in this build)"
    elif not isa.startswith("baseline") or " (loops " in isa:
        _, loops, avx2_build = _paths(isa)
        assert loops == ("avx512f" if "avx512f" in flags and not avx2_build else "avx2")
        assert not avx2_build or "avx512f" in flags


def test_machine_line_in_the_header_and_the_chart():
    info = {"arch": "x86_64", "ncpu": 2, "cpu": "AMD EPYC 7B13", "isa": "avx2+fma", "blas_core": "Haswell"}
    line = bench.machine_text(info)
    assert line == "x86_64, 2 CPUs, AMD EPYC 7B13, fastnn ISA path avx2+fma, OpenBLAS core Haswell"
    real = bench.machine_info()
    assert set(real) == set(info) and real["isa"] == _threads.isa_path()
    row = {"workload": "W3", "unit": "samples/s", "higher_is_better": True, "median": {"fastnn": 2.0, "torch": 1.0},
           "min": {"fastnn": 2.0, "torch": 1.0}, "max": {"fastnn": 2.0, "torch": 1.0}, "target": "", "note": ""}
    result = {"rows": [row], "date": "d", "threads": 1, "repeats": 1, "machine": line, "numpy": "n", "torch": None}
    assert f", {line}; numpy n, torch None" in bench.format_table(result).splitlines()[0]
    pytest.importorskip("matplotlib")
    assert bench.plot(result)._suptitle.get_text().replace(",\n", ", ").endswith(line)


def test_the_charts_subtitle_wraps_after_commas():
    assert bench._wrap_at_commas("a, bb, ccc, d", 6) == "a, bb,\nccc, d"
    assert bench._wrap_at_commas("a long part, b", 3) == "a long part,\nb"      # a part is never broken
    assert bench._wrap_at_commas("", 10) == ""


_CAP_PROBE = """
import numpy as np
from fastnn._core import _threads, conv, dense, losses, rnn
X = np.ones((2, 8), np.float32)
Z = np.empty((2, 8), np.float32)
print(_threads.isa_path())
print(dense.rows_product(X, X.T.copy() @ X, Z), rnn.set_packed_isa(2), conv.set_direct_isa(2), losses.set_exp_isa(2))
"""


def _probe(value):
    env = dict(os.environ, FASTNN_MAX_CPU_ISA=value)
    res = subprocess.run([sys.executable, "-W", "always", "-c", _CAP_PROBE], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    path, kernels = res.stdout.splitlines()
    return path, [int(k) for k in kernels.split()], res.stderr


def test_max_cpu_isa_caps_every_family_of_hand_written_kernels():
    """FASTNN_MAX_CPU_ISA caps the few-row products, the packed recurrent steps, the direct convolutions and the
    exponentials of every extension module at once, and isa_path says so; the loops keep the CPU's path."""
    best, kernels, _ = _probe("")
    if best.startswith("baseline") or kernels == [0, 0, 0, 0]:
        pytest.skip(f"no hand-written kernels on this CPU or build ({best})")
    _, loops, avx2_build = _paths(best)
    build = "; AVX2 build" if avx2_build else ""
    capped, k2, _ = _probe("AVX2")                                          # any case
    assert k2 == [1, 1, 1, 1]
    assert capped == ("avx2+fma" if loops == "avx2" and not build else
                      "avx2+fma (AVX2 build)" if build else f"avx2+fma (loops {loops})")
    base, k0, _ = _probe("baseline")
    assert k0 == [0, 0, 0, 0] and base == f"baseline (loops {loops}{build})"
    assert _probe("avx512f")[:2] == (best, kernels)


def test_an_unknown_max_cpu_isa_warns_and_caps_nothing():
    best, kernels, _ = _probe("")
    path, k, err = _probe("avx9")
    assert (path, k) == (best, kernels)
    assert "RuntimeWarning: FASTNN_MAX_CPU_ISA='avx9' is not one of 'avx512f', 'avx2', 'baseline'" in err
