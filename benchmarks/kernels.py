"""The kernel benchmark with the full configuration, saved under benchmarks/results/.

    python benchmarks/kernels.py [bench kernels options]     # e.g. --threads 2, --shapes 4096x4096

Same as `bench kernels --save benchmarks/results`; the JSON file carries the machine description
(hardware, instruction set, measured read bandwidth, package versions) and every row with its spread.
"""

import sys
from pathlib import Path

from bench.cli import main

if __name__ == "__main__":
    results = Path(__file__).resolve().parent / "results"
    sys.exit(main(["kernels", "--save", str(results), *sys.argv[1:]]))
