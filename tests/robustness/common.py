"""Shared pieces of the robustness tests: models, the methods to sweep, precision measurements."""

from __future__ import annotations

import math
import sys

import torch

import diffode as dd
from tests.helpers import DDPM_BETAS, gaussian, mixture2

SOLVE_MODULE = sys.modules["diffode.solve"]  # ``diffode.solve`` the attribute is the function
FIXED_METHODS = ("multistep", "singlestep", "singlestep_fixed")
ALGORITHMS = ("dpmsolver++", "dpmsolver")
SKIP_TYPES = ("time_uniform", "logSNR", "time_quadratic", "karras")
HALF = (torch.float16, torch.bfloat16)
# The unit roundoff of each dtype (half the distance from 1 to the next number).
UNIT_ROUNDOFF = {dtype: torch.finfo(dtype).eps / 2 for dtype in (torch.float16, torch.bfloat16, torch.float32,
                                                                 torch.float64)}
# The integrators of the precision study, as ``sample`` arguments.
PRECISION_CASES = {"multistep-2": dict(method="multistep", order=2), "multistep-3": dict(method="multistep", order=3),
                   "singlestep-3": dict(method="singlestep", order=3)}


def cosine_betas(n: int = 1000) -> torch.Tensor:
    """The improved-DDPM cosine betas (clamped at 0.999), whose last steps have a very negative lambda."""
    steps = torch.arange(n + 1, dtype=torch.float64) / n
    f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=0.999)


def schedule(name: str) -> dd.NoiseSchedule:
    return {"discrete": lambda: dd.DiscreteVP(betas=DDPM_BETAS), "linear": dd.LinearVP, "cosine": dd.CosineVP,
            "discrete-cosine": lambda: dd.DiscreteVP(betas=cosine_betas())}[name]()


class Counting(dd.Predictor):
    """A predictor that counts its evaluations (and may corrupt chosen samples' outputs)."""

    def __init__(self, inner: dd.Predictor):
        self.inner = inner
        self.schedule = inner.schedule
        self.calls = 0

    def predict(self, x, point, kind):
        self.calls += 1
        return self.inner.predict(x, point, kind)


class Poisoned(dd.Predictor):
    """Outputs ``value`` for the samples in ``samples`` at every evaluation with ``t < below``."""

    def __init__(self, inner: dd.Predictor, samples, below: float, value: float = math.nan):
        self.inner, self.schedule = inner, inner.schedule
        self.samples, self.below, self.value = list(samples), below, value
        self.times: list[float] = []

    def predict(self, x, point, kind):
        self.times.append(point.t)
        out = self.inner.predict(x, point, kind)
        if point.t < self.below:
            out = out.clone()
            out[self.samples] = self.value
        return out


def rounded_exact_network(mixture: dd.GaussianMixture, schedule_: dd.NoiseSchedule):
    """A network that is exact up to its input and output precision: it sees ``x`` in the caller's
    dtype, computes the exact noise prediction in float64 and rounds it back to that dtype.

    Errors measured with it are those of the solver's arithmetic and of rounding the network's input
    and output, not those of evaluating the mixture itself in half precision.
    """
    exact = mixture.network(schedule_, "noise")

    def net(x, t):
        return exact(x.to(torch.float64), t.to(torch.float64)).to(x.dtype)

    return net


def precision_errors(dtype: torch.dtype, case: str, *, mixture: str = "gaussian", schedule_name: str = "discrete",
                     batch: int = 256, device: str = "cpu", seed: int = 0, steps: int = 20) -> dict[str, float]:
    """Error of a ``dtype`` run against a float64 CPU run from the same (rounded) start, in units of
    ``u * scale`` (``u`` the unit roundoff of ``dtype``, ``scale`` the largest |x| of the result).

    Returns:
        ``{"rms": ..., "p99": ..., "max": ..., "dtype_ok": 0 or 1}``.
    """
    s = schedule(schedule_name)
    gm = {"gaussian": gaussian, "mixture2": mixture2}[mixture]()
    model = dd.wrap(rounded_exact_network(gm, s), s, time_input="continuous")
    solver = dd.DPMSolver(model)
    x = torch.randn(batch, *gm.event_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    start = x.to(dtype)
    kwargs = dict(steps=steps, **PRECISION_CASES[case])
    reference = solver.sample(start.to(torch.float64), **kwargs)
    out = solver.sample(start.to(device), **kwargs)
    scale = reference.abs().max().item()
    err = (out.cpu().to(torch.float64) - reference).abs().flatten() / (UNIT_ROUNDOFF[dtype] * scale)
    return {"rms": err.square().mean().sqrt().item(), "p99": torch.quantile(err, 0.99).item(),
            "max": err.max().item(), "dtype_ok": float(out.dtype == dtype and out.device.type == device)}


# Bounds on those errors, in units of u * scale: "at the level of the input precision". Multistep
# order 3 extrapolates through three model outputs with weights of opposite signs, which magnifies
# the rounding of the network's output (a float32 run shows the same factor relative to its own u).
GAUSSIAN_MAX_BOUND = {"multistep-2": 3.0, "singlestep-3": 3.0, "multistep-3": 16.0}
MIXTURE_P99_BOUND = {"multistep-2": 2.0, "singlestep-3": 2.0, "multistep-3": 10.0}
MIXTURE_RMS_BOUND = 3.0
