"""Draw many samples of a built-in model into a sharded, resumable folder; run it under torchrun to share the work.

    python examples/sample_at_scale.py --num-samples 1000 --out-dir samples
    torchrun --nproc_per_node 2 examples/sample_at_scale.py --num-samples 50000 --out-dir samples

Run the same command again after an interruption: finished shards are checked and kept.
"""

from __future__ import annotations

import argparse

import torch

from diffode.generate import generate
from diffode.models.builtin import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="digits", help="a built-in model: digits or mixture")
    parser.add_argument("--integrator", default="dpmpp_2m")
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=2048)
    args = parser.parse_args()
    spec, model = load_model(args.model, dtype=torch.float32)
    report = generate(model, args.integrator, num_samples=args.num_samples, shape=spec.sample_shape,
                      out_dir=args.out_dir, nfe=args.nfe, seed=args.seed, batch_size=args.batch_size,
                      shard_size=args.shard_size, model_name=args.model)
    print(f"{report.samples} samples in {report.seconds:.1f} s ({report.samples_per_second:.1f} samples/s); "
          f"{len(report.shards_skipped)} shards were already complete")


if __name__ == "__main__":
    main()
