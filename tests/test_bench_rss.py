"""The --rss measurement of the benchmark: its pieces that need neither torch nor a subprocess (no timings)."""
from fastnn import bench


def test_maxrss_is_positive_and_never_decreases():
    a = bench._maxrss_mib()
    block = bytearray(8 << 20)          # touch 8 MiB
    block[::4096] = b"x" * len(block[::4096])
    b = bench._maxrss_mib()
    assert 0 < a <= b


def test_format_rss_table():
    rss = {"fastnn": {"imports": 40.0, "data": 60.0, "peak": 70.0},
           "torch": {"imports": 200.0, "data": 220.0, "peak": 300.0}}
    text = bench.format_rss(rss, 2, False)
    assert "| fastnn | 40.0 | 60.0 | 70.0 | 10.0 |" in text
    assert "| torch | 200.0 | 220.0 | 300.0 | 80.0 |" in text
    assert "23% of torch's" in text


def test_cli_accepts_rss_flag(monkeypatch, capsys):
    from fastnn import __main__ as cli
    seen = {}
    monkeypatch.setattr(bench, "measure_rss",
                        lambda threads, full, log: seen.setdefault("args", (threads, full)) and {})
    assert cli.main(["bench", "--rss", "--threads", "1", "--quiet"]) == 0
    assert seen["args"] == (1, False)
    assert "Peak RSS" in capsys.readouterr().out
