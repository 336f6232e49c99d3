"""Benchmark 7: many samples of the built-in digits network on the CPU, killed and resumed.

Runs ``diffode sample --out-dir ... --num-samples N`` (DPM-Solver++ 2M, 20 evaluations), kills it
with SIGKILL after ``--kill-after`` seconds, runs the same command again to finish, and once more
to show that a finished folder is only verified. Then it checks the output: every shard against its
checksum, every sample finite, and the samples against the data the network was trained on
(scikit-learn's ``load_digits``): pixel mean and spread, and the classes that a logistic-regression
classifier fitted to the data assigns to them.

    python benchmarks/sample_at_scale.py                                  # 50,000 samples
    python benchmarks/sample_at_scale.py --num-samples 4000 --kill-after 20 --no-write   # smoke test
    python benchmarks/sample_at_scale.py --check-only --out-dir FOLDER    # check an existing run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

import _common
from _common import markdown_table
from diffode.generate import load_samples, verify
from diffode.models.digits import from_pixels


def command(out_dir: str, num_samples: int, shard_size: int, batch: int) -> list[str]:
    return [sys.executable, "-m", "diffode", "sample", "--model", "digits", "--integrator", "dpmpp_2m",
            "--nfe", "20", "--out-dir", out_dir, "--num-samples", str(num_samples), "--shard-size",
            str(shard_size), "--batch", str(batch), "--seed", "0", "--json", "--quiet"]


def run(cmd: list[str], kill_after: float | None = None) -> tuple[float, dict | None]:
    """Wall time of ``cmd`` and its JSON report (None when it was killed)."""
    start = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = process.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return time.perf_counter() - start, None
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {process.returncode}")
    return time.perf_counter() - start, json.loads(out)


def check(out_dir: str) -> list[list[str]]:
    """Rows describing the finished folder: checksums, finiteness, and likeness to the data."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    damaged = verify(out_dir)
    samples = load_samples(out_dir)
    flat = samples.reshape(len(samples), -1)
    digits = load_digits()
    data = from_pixels(torch.tensor(digits.images, dtype=torch.float32)).numpy().reshape(len(digits.images), -1)
    classifier = LogisticRegression(max_iter=2000).fit(data, digits.target)
    counts = np.bincount(classifier.predict(flat), minlength=10)
    return [
        ["samples", f"{len(samples)}", f"{len(data)} (training data)"],
        ["shards failing their checksum", f"{len(damaged)}", ""],
        ["all finite", f"{bool(np.isfinite(flat).all())}", ""],
        ["pixel mean", f"{flat.mean():.4f}", f"{data.mean():.4f}"],
        ["pixel standard deviation", f"{flat.std():.4f}", f"{data.std():.4f}"],
        ["classifier's confidence (mean top probability)", f"{classifier.predict_proba(flat).max(1).mean():.3f}",
         f"{classifier.predict_proba(data).max(1).mean():.3f}"],
        ["class counts, smallest / largest share", f"{counts.min() / counts.sum():.3f} / {counts.max() / counts.sum():.3f}",
         "0.1 / 0.1 when balanced"],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-samples", type=int, default=50_000)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--kill-after", type=float, default=240.0, help="seconds before the first run is killed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the sampling processes")
    parser.add_argument("--out-dir", help="output folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--check-only", action="store_true", help="only check an existing --out-dir")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write results/sample_at_scale.md")
    args = parser.parse_args(argv)
    if args.check_only and not args.out_dir:
        parser.error("--check-only needs --out-dir (the folder of a finished run)")

    out_dir = args.out_dir or tempfile.mkdtemp(prefix="diffode-scale-")
    sections = ["# Sampling at scale: the digits network on the CPU", "", _common.environment(), ""]
    try:
        if not args.check_only:
            os.environ["OMP_NUM_THREADS"] = str(args.threads)
            cmd = command(out_dir, args.num_samples, args.shard_size, args.batch)
            killed, _ = run(cmd, kill_after=args.kill_after)
            done_at_kill = len([f for f in os.listdir(out_dir) if f.startswith("shard-") and f.endswith(".npz")])
            resumed, report = run(cmd)
            again, verified = run(cmd)
            rate = report["samples"] / report["seconds"]
            sections += ["`" + " ".join(["diffode"] + cmd[3:]) + "`", "", markdown_table(
                ["run", "wall time (s)", "what it did"],
                [["first, killed with SIGKILL", f"{killed:.0f}", f"{done_at_kill} shard(s) complete"],
                 ["the same command again", f"{resumed:.0f}",
                  f"skipped {done_at_kill} verified shard(s); wrote {report['samples']} samples at {rate:.1f} samples/s"],
                 ["and once more", f"{again:.1f}", f"wrote {verified['samples']} samples (all shards verified)"]]), ""]
        sections += [markdown_table(["check", "samples", "reference"], check(out_dir))]
    finally:
        if not args.out_dir:
            shutil.rmtree(out_dir, ignore_errors=True)
    _common.report(sections, "sample_at_scale", write=not args.no_write)


if __name__ == "__main__":
    main()
