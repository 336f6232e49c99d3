"""Run diffode's GPU checks once on a machine with CUDA and print a summary (about a minute).

Usage, from the repository root::

    python scripts/gpu_check.py            # exit status 0 when every check passes

It runs ``tests/robustness/test_cuda.py`` (every method on the GPU against the CPU, float16 and
bfloat16 sampling, the fixed-grid loop under ``torch.cuda.set_sync_debug_mode("error")``,
non-finite detection, determinism), then prints the half-precision error table: the error of a
float16 / bfloat16 / float32 run on the GPU against a float64 run on the CPU from the same rounded
start, in units of the dtype's unit roundoff times the scale of the result, next to the bounds the
tests assert. Without a GPU it says so and exits with status 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_cuda_tests() -> bool:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, "-m", "pytest", "tests/robustness/test_cuda.py", "-m", "cuda",
               "-q", "-rfEs", "-p", "no:cacheprovider"]
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env).returncode == 0


def precision_table() -> bool:
    import torch

    from tests.robustness.common import (
        GAUSSIAN_MAX_BOUND,
        MIXTURE_P99_BOUND,
        MIXTURE_RMS_BOUND,
        PRECISION_CASES,
        precision_errors,
    )

    ok = True
    print(f"\n{'dtype':9s} {'integrator':13s} {'gaussian max':>13s} {'bound':>6s} {'mixture rms':>12s} "
          f"{'p99':>6s} {'max':>7s} {'bound(p99)':>10s}")
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for case in PRECISION_CASES:
            g = precision_errors(dtype, case, mixture="gaussian", device="cuda")
            m = precision_errors(dtype, case, mixture="mixture2", device="cuda")
            checked = dtype != torch.float32
            passed = not checked or (g["max"] <= GAUSSIAN_MAX_BOUND[case] and m["p99"] <= MIXTURE_P99_BOUND[case]
                                     and m["rms"] <= MIXTURE_RMS_BOUND and g["dtype_ok"] == m["dtype_ok"] == 1.0)
            ok &= passed
            bounds = (f"{GAUSSIAN_MAX_BOUND[case]:6.1f}", f"{MIXTURE_P99_BOUND[case]:10.1f}") if checked else ("-", "-")
            print(f"{str(dtype)[6:]:9s} {case:13s} {g['max']:13.2f} {bounds[0]:>6s} {m['rms']:12.2f} {m['p99']:6.2f} "
                  f"{m['max']:7.2f} {bounds[1]:>10s} {'ok' if passed else 'FAIL'}")
    print("(units: the dtype's unit roundoff times the largest |x| of the result; float32 for comparison)")
    return ok


def main() -> int:
    import torch

    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here (the CUDA tests skip themselves in the normal suite)")
        return 2
    print(f"device: {torch.cuda.get_device_name()}")
    start = time.perf_counter()
    results = {"CUDA tests (tests/robustness/test_cuda.py)": run_cuda_tests()}
    results["half-precision error table"] = precision_table()
    print(f"\nsummary ({time.perf_counter() - start:.0f} s):")
    for name, passed in results.items():
        print(f"  {'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
