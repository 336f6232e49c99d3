"""Benchmark 4: peak memory of a sampling run, in units of the size of x, beyond the model's own.

A ``TorchDispatchMode`` sees every tensor operation of the run. It records each new storage an
operation returns (its bytes), notices when the storage dies (a weak reference), and keeps the
peak of the bytes alive. Storages that existed before the run (x_T itself, the model's fixed
tensor, schedule tables) are not counted. The model is near-free (a fixed tensor times a scalar),
so it has no workspace of its own: everything counted is what the sampler holds, the state, the
model outputs it keeps (each counted from the moment the model returns it), the converted
predictions and the temporaries of its update. A real network adds its activations on top, which
is "the model's own". On CUDA, ``torch.cuda.max_memory_allocated`` gives a second, independent
reading.

    python benchmarks/memory.py                 # writes results/memory.md
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import _common
from _common import markdown_table
import diffode as dd
from diffode import study
from diffode.integrators.grids import get_grid
from diffode.models.builtin import ddpm_betas

STEPS = 20


class PeakMemory(TorchDispatchMode):
    """Tracks the bytes of storages created by tensor operations while active, and their peak."""

    def __init__(self, exclude=()):
        super().__init__()
        self.excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _sweep(self) -> None:
        for key, (ref, nbytes) in list(self.live.items()):
            if ref.expired():
                del self.live[key]
                self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self._sweep()
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key in self.excluded or key in self.live or storage.nbytes() == 0:
                    continue
                self.live[key] = (StorageWeakRef(storage), storage.nbytes())
                self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out


def measure(run, exclude) -> float:
    """Peak bytes held during ``run()``."""
    with PeakMemory(exclude) as mode:
        result = run()
    del result
    return mode.peak


def runners(shape, device, kd, diffusers):
    betas = ddpm_betas()
    schedule = dd.DiscreteVP(betas=betas)
    x = torch.randn(shape, device=device)
    fixed = torch.randn(shape, device=device)

    def net(x, t):
        return fixed * 0.5

    model = dd.wrap(net, schedule, "noise")
    grid = get_grid("time_uniform")
    out = []
    for name, k in (("ddim", 1), ("dpmpp_2m", 2), ("dpmpp_3m", 3), ("dpm_2m", 2), ("dpm_3m", 3), ("dpmpp_3s", None)):
        integrator = study.configure_integrator(name)

        def run(integrator=integrator):
            return dd.solve(model, x, integrator, grid.times(schedule, 1.0, schedule.default_t_end, STEPS)).x

        out.append((f"diffode {name}", k, run))
    if diffusers is not None:
        diffusers.utils.logging.set_verbosity_error()
        for order in (2, 3):
            scheduler = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=betas.numpy(),
                                                              solver_order=order)

            def run(scheduler=scheduler):
                scheduler.set_timesteps(STEPS, device=device)
                y = x
                for t in scheduler.timesteps:
                    y = scheduler.step(net(y, t), t, y).prev_sample
                return y

            out.append((f"diffusers DPMSolverMultistep o{order}", order, run))
    if kd is not None:
        p0 = schedule.point(1.0)
        sigma_max, sigma_min = p0.sigma / p0.alpha, math.exp(-schedule.point(schedule.default_t_end).lam)

        def run_kd():
            sigmas = kd.get_sigmas_karras(STEPS, sigma_min, sigma_max, device=device)
            return kd.sample_dpmpp_2m(lambda y, s: net(y, s), x, sigmas, disable=True)

        out.append(("k-diffusion sample_dpmpp_2m", 2, run_kd))
    return out, x, fixed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default); with one, diffode's fused CPU update runs")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--name", default="memory")
    args = parser.parse_args(argv)
    _common.set_threads(args.threads or None)
    kd = _common.load_kdiffusion_sampling()
    diffusers = _common.load_diffusers()
    sections = ["# Peak memory of a sampling run", "", f"Environment: {_common.environment()}", "",
                "Produced by `python benchmarks/memory.py`: 20 steps, float32, a near-free noise model (no workspace "
                "of its own); peak bytes alive during the run, x_T excluded, in units of x (tiny tensors such as "
                "time inputs make the hundredths). "
                "Target for an order-k multistep run: at most k + 2.", ""]
    cuda = torch.device(args.device).type == "cuda"
    for shape in ((16, 4, 64, 64), (64, 3, 32, 32)):
        items, x, fixed = runners(shape, args.device, kd, diffusers)
        size = x.numel() * x.element_size()
        header = ["sampler", "order k", "peak / size(x)", "target k + 2", "met"]
        if cuda:
            header.append("CUDA peak / size(x), model incl.")
        rows = []
        for label, k, run in items:
            run()  # warm-up (lazy imports, caches)
            peak = measure(run, (x, fixed)) / size
            row = [label, "" if k is None else str(k), f"{peak:.2f}", "" if k is None else str(k + 2),
                   "" if k is None else ("yes" if peak <= k + 2.01 else "no")]
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                result = run()
                torch.cuda.synchronize()
                row.append(f"{(torch.cuda.max_memory_allocated() - base) / size:.2f}")
                del result
            rows.append(row)
        sections += [f"### x: float32 {shape} on {args.device}", "", markdown_table(header, rows), ""]
    _common.report(sections, args.name, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
