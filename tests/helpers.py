"""Shared fixtures-as-functions for the tests: schedules, mixtures and cached reference solutions."""

from __future__ import annotations

import functools

import torch

import diffode as dd

DDPM_BETAS = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)


def schedules() -> dict[str, dd.NoiseSchedule]:
    """The variance-preserving schedules."""
    return {"discrete": dd.DiscreteVP(betas=DDPM_BETAS), "linear": dd.LinearVP(), "cosine": dd.CosineVP()}


def paths() -> dict[str, dd.NoiseSchedule]:
    """The schedules beyond VP: variance-exploding, sub-VP, EDM and flow-matching paths."""
    return {"ve": dd.VE(), "subvp": dd.SubVP(), "edm": dd.EDM(), "flow": dd.FlowMatching(),
            "flow_shift3": dd.FlowMatching(shift=3.0)}


def every_schedule() -> dict[str, dd.NoiseSchedule]:
    return {**schedules(), **paths()}


def mixture2() -> dd.GaussianMixture:
    """Two components in 4 dimensions; mu != 0 and s != 1 so that no method is exact."""
    return dd.GaussianMixture([0.3, 0.7], [[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], [0.3, 0.6])


def mixture4() -> dd.GaussianMixture:
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64) * 1.5
    return dd.GaussianMixture([0.1, 0.2, 0.3, 0.4], means, [0.2, 0.35, 0.5, 0.8])


def gaussian() -> dd.GaussianMixture:
    return dd.GaussianMixture([1.0], [[0.8, -1.2, 0.5]], [0.4])


@functools.lru_cache(maxsize=None)
def reference(schedule_name: str, mixture_name: str, t_start: float | None = None, t_end: float | None = None,
              batch: int = 8, seed: int = 0):
    """(model, x_T, exact x at t_end) for a schedule and a mixture, cached across tests."""
    schedule = every_schedule()[schedule_name]
    mixture = {"mixture2": mixture2, "mixture4": mixture4, "gaussian": gaussian}[mixture_name]()
    model = mixture.predictor(schedule)
    t_start = schedule.T if t_start is None else t_start
    t_end = schedule.default_t_end if t_end is None else t_end
    x = torch.randn(batch, *mixture.event_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * schedule.prior_std()  # 1 for VP schedules; sigma_max for VE and EDM
    exact = dd.solve_reference(model, x, t_start, t_end).x
    return model, x, exact


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).square().mean().sqrt().item()
