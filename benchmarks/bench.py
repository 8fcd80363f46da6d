"""The side-by-side benchmark (fastnn / PyTorch eager / plain numpy): the same as ``python -m fastnn bench``.

    python benchmarks/bench.py [--workloads W1,W3] [--repeats 5] [--threads 2] [--full] [--json PATH] [--png PATH]

The workloads and the method are described in fastnn/bench.py and benchmarks/README.md.
"""
import sys

from fastnn.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench"] + sys.argv[1:]))
