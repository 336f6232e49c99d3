"""Trains the packaged 8x8 digits epsilon-prediction network.

Standard DDPM training on scikit-learn's ``load_digits`` images:

* data ``x0 = pixels / 16 * 2 - 1`` (no augmentation: digits are not
  flip-invariant),
* uniform discrete step ``n`` in ``0..999`` with the linear betas of
  :func:`diffode.models.digits.digits_betas`,
* ``x_n = sqrt(abar_n) x0 + sqrt(1 - abar_n) eps`` and the loss
  ``|| model(x_n, t=n) - eps ||^2``,
* Adam with a short warmup and cosine learning-rate decay, plus an exponential
  moving average (EMA) of the weights; the EMA weights are the ones saved.

The output file stores a float16 ``state_dict`` plus the network
configuration, which is what :func:`diffode.models.digits.load_digits_model`
reads.

Example::

    python examples/train_digits.py --steps 4000 --out diffode/models/weights/digits_eps.pt

Requires ``scikit-learn``.  Runs in roughly ten minutes on two CPU cores with
the default settings.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffode.models.digits import (  # noqa: E402
    DigitsUNet,
    digits_betas,
    from_pixels,
    weights_path,
)


def load_data() -> torch.Tensor:
    """Loads the digits data set as a ``(1797, 1, 8, 8)`` tensor in ``[-1, 1]``."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8), values 0..16
    return from_pixels(torch.as_tensor(images, dtype=torch.float32)).unsqueeze(1)


def parse_args() -> argparse.Namespace:
    """Parses the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000, help="number of optimizer steps")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="number of epochs over the data (overrides --steps if given)",
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=200, help="linear warmup steps")
    parser.add_argument("--ema", type=float, default=0.999, help="EMA decay of the weights")
    parser.add_argument("--channels", type=int, default=48, help="base channel width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument("--out", type=Path, default=weights_path(), help="output weights file")
    return parser.parse_args()


def main() -> None:
    """Runs training and writes the EMA weights to ``--out``."""
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = load_data()
    num = data.shape[0]
    steps_per_epoch = math.ceil(num / args.batch_size)
    steps = args.epochs * steps_per_epoch if args.epochs is not None else args.steps

    alpha_bar = torch.cumprod(1.0 - digits_betas(), dim=0).float()
    sqrt_ab = alpha_bar.sqrt()
    sqrt_1mab = (1.0 - alpha_bar).sqrt()

    config = {"channels": args.channels}
    model = DigitsUNet(**config)
    ema = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"DigitsUNet(channels={args.channels}): {n_params} parameters, {steps} steps")

    opt = torch.optim.Adam(model.parameters(), lr=args.lr)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))

    perm = torch.randperm(num)
    pos = 0
    running = None
    start = time.time()
    model.train()
    for step in range(steps):
        if pos + args.batch_size > num:
            perm = torch.randperm(num)
            pos = 0
        idx = perm[pos : pos + args.batch_size]
        pos += args.batch_size
        x0 = data[idx]
        b = x0.shape[0]

        n = torch.randint(0, len(alpha_bar), (b,))
        eps = torch.randn_like(x0)
        xn = sqrt_ab[n].view(b, 1, 1, 1) * x0 + sqrt_1mab[n].view(b, 1, 1, 1) * eps
        loss = (model(xn, n.float()) - eps).pow(2).mean()

        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

        decay = min(args.ema, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)

        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            print(
                f"step {step + 1:6d}/{steps}  loss {loss.item():.4f}  "
                f"smoothed {running:.4f}  lr {lr_at(step):.2e}  {time.time() - start:.0f}s",
                flush=True,
            )

    # Evaluate the EMA model on a fixed noising of the full data set.
    ema.eval()
    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        n = torch.randint(0, len(alpha_bar), (num,), generator=gen)
        eps = torch.randn(data.shape, generator=gen)
        xn = sqrt_ab[n].view(-1, 1, 1, 1) * data + sqrt_1mab[n].view(-1, 1, 1, 1) * eps
        ema_loss = (ema(xn, n.float()) - eps).pow(2).mean().item()
    print(f"final EMA loss on full data (one noise draw): {ema_loss:.4f}")
    print(f"training time: {time.time() - start:.0f}s")

    state = {k: v.detach().to(torch.float16) for k, v in ema.state_dict().items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config, "state_dict": state}, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
