"""The benchmark's machine line: the CPU model, the ISA path of fastnn's runtime dispatch and OpenBLAS's core type,
in the table's header and the chart's subtitle (no timings)."""
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


def test_isa_path_and_blas_core_type():
    assert _threads.isa_path() in ISA_PATHS
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
    if isa.startswith("baseline") and "avx2" in flags:
        assert isa == "baseline (no runtime dispatch in this build)"
    elif not isa.startswith("baseline"):
        assert isa == ("avx512f" if "avx512f" in flags else "avx2+fma" if "fma" in flags else "avx2")


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
