"""Run every benchmark and write results/*.md: accuracy, convergence, overhead, memory, end to end.

    python benchmarks/run_all.py             # about 45 minutes on 2 busy cores (accuracy.py ~30, end_to_end.py 10)
    python benchmarks/run_all.py --quick     # smaller batch and fewer repeats, for a smoke test
"""

from __future__ import annotations

import argparse
import sys
import time

import accuracy
import convergence
import end_to_end
import memory
import overhead


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="accuracy --quick, 5 repeats; end to end: 10 steps, 5 rounds")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    extra = ["--no-write"] if args.no_write else []
    status = 0
    for name, module, argv_ in (
        ("accuracy", accuracy, ["--quiet", *(["--quick"] if args.quick else []), *extra]),
        ("convergence", convergence, extra),
        ("overhead", overhead, [*(["--repeat", "5"] if args.quick else []), *extra]),
        ("memory", memory, extra),
        ("end_to_end", end_to_end, [*(["--quick"] if args.quick else []), *extra]),
    ):
        start = time.perf_counter()
        print(f"== {name}", file=sys.stderr)
        status |= module.main(argv_)
        print(f"== {name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
