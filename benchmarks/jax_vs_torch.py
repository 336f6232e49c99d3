"""Benchmark: the jit-compiled JAX loop (diffode.jax) beside the eager PyTorch loop (diffode.solve), on CPU.

Both run the same plan of the same integrator on the same model in float32: the analytic Gaussian
mixture (8 components in 64 dimensions; its exact noise prediction is one function that evaluates on
torch tensors and on JAX arrays) and a small MLP (64 -> 256 -> 256 -> 64 with a sinusoidal time
embedding; the same random weights on both sides). For each integrator and NFE the table gives the
median time of one sampling call (after warm-up; the JAX sampler's one-off recording and
compilation are shown apart), the ratio torch / JAX, and the largest difference between the two
samples relative to their size. Every figure is the median over ``--repeat`` rounds, each round
running both samplers in turn, so that a change in the machine's load hits both alike.

    python benchmarks/jax_vs_torch.py            # writes results/jax_vs_torch.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diffode as dd  # noqa: E402
from benchmarks._common import environment, report, set_threads  # noqa: E402
from diffode.models.analytic import GaussianMixture  # noqa: E402

DIM, BATCH = 64, 16
INTEGRATORS = ["dpmpp_2m", "dpmpp_3s", "unipc_bh2_3", "heun"]
NFES = [10, 20]


def mixture_models(schedule):
    import jax.numpy as jnp

    import diffode.jax as djax

    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture(torch.rand(8, generator=g, dtype=torch.float64) + 0.1,
                              torch.randn(8, DIM, generator=g, dtype=torch.float64),
                              0.2 + 0.5 * torch.rand(8, generator=g, dtype=torch.float64))

    def network(x, t):
        alpha, sigma = jnp.exp(schedule.log_alpha(t))[:, None], jnp.exp(schedule.log_sigma(t))[:, None]
        return mixture.eps(x, alpha, sigma)

    return mixture.predictor(schedule), djax.wrap(network, schedule, time_input="continuous")


def mlp_models(schedule):
    import jax
    import jax.numpy as jnp

    import diffode.jax as djax

    rng = np.random.default_rng(0)
    freqs = np.exp(-np.log(1000.0) * np.arange(16) / 16).astype(np.float32)
    sizes = [(DIM + 32, 256), (256, 256), (256, DIM)]
    weights = [((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32), np.zeros(s[1], np.float32)) for s in sizes]

    def torch_net(x, t):
        angles = t.float()[:, None] * torch.from_numpy(freqs)[None]
        h = torch.cat([x, torch.sin(angles), torch.cos(angles)], dim=1)
        for i, (w, b) in enumerate(weights):
            h = h @ torch.from_numpy(w) + torch.from_numpy(b)
            if i < len(weights) - 1:
                h = torch.nn.functional.silu(h)
        return h

    jax_weights = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]

    def jax_net(x, t):
        angles = t[:, None] * jnp.asarray(freqs)[None]
        h = jnp.concatenate([x, jnp.sin(angles), jnp.cos(angles)], axis=1)
        for i, (w, b) in enumerate(jax_weights):
            h = h @ w + b
            if i < len(jax_weights) - 1:
                h = jax.nn.silu(h)
        return h

    return (dd.models.wrap(torch_net, schedule, time_input="continuous"),
            djax.wrap(jax_net, schedule, time_input="continuous"))


def rows_for(label, torch_model, jax_model, schedule, repeat):
    import jax.numpy as jnp

    import diffode.jax as djax

    x = torch.randn(BATCH, DIM, generator=torch.Generator().manual_seed(1))
    xj = jnp.asarray(x.numpy())
    rows = []
    for name in INTEGRATORS:
        integrator = dd.get_integrator(name)
        for nfe in NFES:
            plan = integrator.plan(schedule, nfe)
            start = time.perf_counter()
            sampler = djax.Sampler(jax_model, integrator, plan)
            recorded = time.perf_counter() - start
            start = time.perf_counter()
            out_jax = sampler(xj).block_until_ready()
            first = time.perf_counter() - start
            out_torch = dd.solve(torch_model, x, integrator, plan).x
            torch_times, jax_times = [], []
            for _ in range(repeat):
                start = time.perf_counter()
                dd.solve(torch_model, x, integrator, plan)
                torch_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                sampler(xj).block_until_ready()
                jax_times.append(time.perf_counter() - start)
            t_torch, t_jax = statistics.median(torch_times), statistics.median(jax_times)
            diff = float(np.abs(np.asarray(out_jax) - out_torch.numpy()).max() / np.abs(out_torch.numpy()).max())
            rows.append(f"| {label} | {name} | {plan.nfe} | {1e3 * t_torch:.2f} | {1e3 * t_jax:.2f} | "
                        f"{t_torch / t_jax:.1f} | {1e3 * recorded:.0f} + {1e3 * first:.0f} | {diff:.1e} |")
            print(rows[-1], file=sys.stderr)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import jax

    schedule = dd.schedules.LinearVP()
    rows = rows_for("mixture", *mixture_models(schedule), schedule, args.repeat)
    rows += rows_for("MLP", *mlp_models(schedule), schedule, args.repeat)
    header = ["# JAX (compiled) vs PyTorch (eager) sampling loops on CPU", "",
              f"{environment()}; jax {jax.__version__} on {jax.devices()[0].platform}; float32, batch {BATCH} "
              f"x {DIM}, LinearVP, logSNR grid; medians of {args.repeat} interleaved rounds.", "",
              "Setup = recording the plan's program from the PyTorch integrator + the first call (compilation; "
              "later samplers with a table of the same shape reuse the compiled loop, hence the small figures "
              "after the first row of each model). On a shared small CPU the medians move by tens of percent "
              "between runs; the ratios are the figure to read.", "",
              "| model | integrator | NFE | torch ms | JAX ms | torch / JAX | JAX setup ms | max rel. diff |",
              "|---|---|---|---|---|---|---|---|"]
    report(["\n".join(header + rows)], "jax_vs_torch", not args.no_write)


if __name__ == "__main__":
    main()
