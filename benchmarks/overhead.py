"""Benchmark 3: solver overhead per step against the memory floor, diffode beside diffusers and k-diffusion.

The model is near-free: a fixed tensor times a scalar (it still allocates its output, as a network
does), read once as an epsilon network and once as a data (x0) network, so that every library does
the conversions it does for that kind of network. A run is 20 steps on float32 tensors; its overhead
per step is (run time - NFE x model time) / steps, the run time being the whole sampling call (grid
and coefficients included).

The floor is the time one step must spend moving bytes: reading x and the model outputs the update
combines and writing the new x, i.e. k + 2 tensor passes for an order-k multistep step and 3 + 4 + 4
for a DPM-Solver-3 step, at the per-pass time of ``torch.add`` (which moves three tensors) on the
same shapes. Two floors are shown: ``hot``, ``torch.add`` on the same two tensors over and over
(cache-resident when they fit), and ``streaming``, ``torch.add`` through a pool of 48 distinct
tensors (memory bandwidth). The targets are read against the hot floor, the stricter one.

Every figure is the median over ``--repeat`` rounds; in each round every sampler runs once, in turn,
so that a change in the machine's load hits all of them alike.

    python benchmarks/overhead.py                # writes results/overhead.md
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

import _common
from _common import markdown_table
import diffode as dd
from diffode import study
from diffode.integrators.grids import get_grid
from diffode.models.builtin import ddpm_betas

SHAPES = ((16, 4, 64, 64), (64, 3, 32, 32))
STEPS = 20


def floors(shape, device, repeat: int) -> tuple[float, float]:
    """Seconds per tensor pass: hot and streaming ``torch.add``."""
    a = torch.randn(shape, device=device)
    b = torch.randn(shape, device=device)

    def hot():
        for _ in range(20):
            torch.add(a, b)

    pool = [torch.randn(shape, device=device) for _ in range(48)]
    outs = [torch.empty(shape, device=device) for _ in range(16)]

    def stream():
        for i in range(48):
            torch.add(pool[i], pool[(i + 17) % 48], out=outs[i % 16])

    sync = _sync(device)
    t_hot = _common.median_time(lambda: (hot(), sync()), repeat) / 20 / 3
    t_stream = _common.median_time(lambda: (stream(), sync()), repeat) / 48 / 3
    return t_hot, t_stream


def _sync(device):
    if torch.device(device).type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class Runner:
    """One sampler on one shape: ``run()`` samples once, spending ``nfe`` evaluations.

    Its overhead is reported per ``unit`` (``"step"`` for multistep methods, one evaluation each;
    ``"eval"`` for singlestep methods, whose steps hold several evaluations and whose peers count
    steps differently), of which a run holds ``units``, each making ``passes`` tensor passes at least.
    """

    def __init__(self, label, library, run, nfe, units, passes, unit="step"):
        self.label, self.library, self.run, self.nfe = label, library, run, nfe
        self.units, self.passes, self.unit = units, passes, unit
        self.times: list[float] = []


def make_runners(shape, device, kd, diffusers, predicts: str) -> tuple[list[Runner], object]:
    """The samplers, all driving the same near-free network, which predicts ``predicts``.

    ``"noise"``: each library converts the output as it does for an epsilon network (diffode's
    parameterization, diffusers' ``prediction_type="epsilon"``, k-diffusion's eps-denoiser arithmetic
    ``x + eps(x * c_in) * c_out``, without its sigma-to-timestep lookup). ``"data"``: the network
    returns the data prediction, which no library needs to convert.
    """
    betas = ddpm_betas()
    schedule = dd.DiscreteVP(betas=betas)
    x = torch.randn(shape, device=device)
    fixed = torch.randn(shape, device=device)

    def net(x, t):
        return fixed * 0.5

    tag = "eps" if predicts == "noise" else "x0"
    runners = []
    model = dd.wrap(net, schedule, predicts)
    grid = get_grid("time_uniform")
    t_end = schedule.default_t_end
    for name, passes, nfe in (("dpmpp_2m", 4, STEPS), ("dpmpp_3m", 5, STEPS), ("dpmpp_3s", 11, 3 * STEPS)):
        integrator = study.configure_integrator(name)

        def run(integrator=integrator):
            return dd.solve(model, x, integrator, grid.times(schedule, 1.0, t_end, STEPS)).x

        label = f"diffode {name} ({tag})"
        if nfe == STEPS:
            runners.append(Runner(label, "diffode", run, nfe, STEPS, passes))
        else:
            runners.append(Runner(label, "diffode", run, nfe, nfe, passes / 3, unit="eval"))
    if diffusers is not None:
        diffusers.utils.logging.set_verbosity_error()
        for order, cls_name, passes in ((2, "DPMSolverMultistepScheduler", 4), (3, "DPMSolverMultistepScheduler", 5),
                                        (3, "DPMSolverSinglestepScheduler", 11 / 3)):
            cls = getattr(diffusers, cls_name)
            scheduler = cls(num_train_timesteps=1000, trained_betas=betas.numpy(), solver_order=order,
                            prediction_type="epsilon" if predicts == "noise" else "sample")

            def run(scheduler=scheduler):
                scheduler.set_timesteps(STEPS, device=device)
                y = x
                for t in scheduler.timesteps:
                    y = scheduler.step(net(y, t), t, y).prev_sample
                return y

            # diffusers' singlestep scheduler spends one evaluation per timestep: 20 timesteps = 20 NFE.
            unit = "eval" if "Singlestep" in cls_name else "step"
            runners.append(Runner(f"diffusers {cls_name.replace('Scheduler', '')} o{order} ({tag})", "diffusers", run,
                                  STEPS, STEPS, passes, unit))
    if kd is not None:
        p0 = schedule.point(1.0)
        sigma_max, sigma_min = p0.sigma / p0.alpha, math.exp(-schedule.point(t_end).lam)
        if predicts == "noise":
            def denoiser(x, sigma):
                # k-diffusion's scalings for an eps network on a VP schedule: c_in = 1/sqrt(sigma^2 + 1), c_out = -sigma
                s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
                return x + net(x * (s * s + 1.0).rsqrt(), sigma) * -s
        else:
            def denoiser(x, sigma):
                return net(x, sigma)

        def run_2m():
            sigmas = kd.get_sigmas_karras(STEPS, sigma_min, sigma_max, device=device)
            return kd.sample_dpmpp_2m(denoiser, x, sigmas, disable=True)

        def run_3m():
            sigmas = kd.get_sigmas_karras(STEPS, sigma_min, sigma_max, device=device)
            return kd.sample_dpmpp_3m_sde(denoiser, x, sigmas, disable=True, eta=0.0, noise_sampler=lambda s, t: None)

        def run_fast():
            return kd.sample_dpm_fast(denoiser, x, sigma_min, sigma_max, 3 * STEPS, disable=True)

        runners.append(Runner(f"k-diffusion sample_dpmpp_2m ({tag})", "k-diffusion", run_2m, STEPS, STEPS, 4))
        runners.append(Runner(f"k-diffusion sample_dpmpp_3m_sde(eta=0) ({tag})", "k-diffusion", run_3m, STEPS, STEPS,
                              5))
        runners.append(Runner(f"k-diffusion sample_dpm_fast ({tag})", "k-diffusion", run_fast, 3 * STEPS, 3 * STEPS,
                              11 / 3, "eval"))
    return runners, (lambda: net(x, None))


def measure(shape, device, repeat: int, kd, diffusers):
    runners, model_call = make_runners(shape, device, kd, diffusers, "noise")
    runners += make_runners(shape, device, kd, diffusers, "data")[0]
    sync = _sync(device)

    def model_loop():
        # The model alone, with the allocation pattern of a sampler (a few outputs alive at a time).
        held = [None, None, None]
        for i in range(STEPS):
            held[i % 3] = model_call()
        sync()

    model_times = []
    for r in runners:  # warm-up: caches, lazy imports, allocator
        r.run()
        r.run()
    model_loop()
    for _ in range(repeat):
        start = time.perf_counter()
        model_loop()
        model_times.append((time.perf_counter() - start) / STEPS)
        for r in runners:
            start = time.perf_counter()
            r.run()
            sync()
            r.times.append(time.perf_counter() - start)
    t_hot, t_stream = floors(shape, device, repeat)
    return runners, statistics.median(model_times), t_hot, t_stream


def render(shape, runners, t_model, t_hot, t_stream, device) -> tuple[str, dict]:
    header = ["sampler", "NFE", "run (ms)", "overhead (us)", "per", "floor hot (us)", "x floor hot",
              "x floor streaming"]
    rows = []
    per_unit = {}
    for r in runners:
        run = statistics.median(r.times)
        overhead = (run - r.nfe * t_model) / r.units
        floor_hot = r.passes * t_hot
        floor_stream = r.passes * t_stream
        per_unit[r.label] = (overhead, floor_hot)
        rows.append([r.label, str(r.nfe), f"{run * 1e3:.2f}", f"{overhead * 1e6:.0f}", r.unit, f"{floor_hot * 1e6:.0f}",
                     f"{overhead / floor_hot:.1f}", f"{overhead / floor_stream:.1f}"])
    mib = math.prod(shape) * 4 / 2**20
    text = "\n".join([
        f"### x: float32 {shape} ({mib:.2f} MiB) on {device}",
        "",
        f"Model call {t_model * 1e6:.0f} us; torch.add per tensor pass: hot {t_hot * 1e6:.1f} us "
        f"({mib / 2**10 / t_hot:.0f} GiB/s), streaming {t_stream * 1e6:.1f} us ({mib / 2**10 / t_stream:.0f} GiB/s).",
        "",
        markdown_table(header, rows),
    ])
    return text, per_unit


def comparisons(per_unit: dict) -> list[list[str]]:
    """diffode against the peers' equivalents, each network type alike: the ratio of overheads."""
    rows = []
    pairs = (("dpmpp_2m", "diffusers DPMSolverMultistep o2"), ("dpmpp_2m", "k-diffusion sample_dpmpp_2m"),
             ("dpmpp_3m", "diffusers DPMSolverMultistep o3"), ("dpmpp_3m", "k-diffusion sample_dpmpp_3m_sde(eta=0)"),
             ("dpmpp_3s", "diffusers DPMSolverSinglestep o3"), ("dpmpp_3s", "k-diffusion sample_dpm_fast"))
    for tag in ("eps", "x0"):
        for ours, peer in pairs:
            a, b = f"diffode {ours} ({tag})", f"{peer} ({tag})"
            if a in per_unit and b in per_unit:
                rows.append([a, b, f"{per_unit[b][0] / per_unit[a][0]:.1f}"])
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--name", default="overhead", help="results/<name>.md")
    args = parser.parse_args(argv)
    _common.set_threads(args.threads or None)
    kd = _common.load_kdiffusion_sampling()
    diffusers = _common.load_diffusers()
    sections = ["# Solver overhead per step", "", f"Environment: {_common.environment()}", "",
                "Produced by `python benchmarks/overhead.py`; method in benchmarks/README.md. Overhead = "
                "(run - NFE x model) / 20 steps; floor = the tensor passes a step must make (k + 2 for "
                "order-k multistep, 11 for a DPM-Solver-3 step) x the time of one pass of torch.add.", ""]
    for shape in SHAPES:
        runners, t_model, t_hot, t_stream = measure(shape, args.device, args.repeat, kd, diffusers)
        text, per_step = render(shape, runners, t_model, t_hot, t_stream, args.device)
        sections += [text, "", "Peer overhead / diffode overhead (higher is better for diffode):", "",
                     markdown_table(["diffode", "peer", "peer / diffode"], comparisons(per_step)), ""]
        print(text, file=sys.stderr)
    _common.report(sections, args.name, not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
