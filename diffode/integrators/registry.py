"""Named integrator configurations: ``get_integrator("dpmpp_2m")``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import Integrator
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep

__all__ = ["INTEGRATORS", "get_integrator", "register"]


@dataclass(frozen=True)
class Entry:
    """A registered configuration: a factory and a one-line description."""

    factory: Callable[[], Integrator]
    description: str


INTEGRATORS: dict[str, Entry] = {}


def register(name: str, description: str):
    """Decorator (or call with a factory) that registers a named integrator configuration."""

    def add(factory: Callable[[], Integrator]) -> Callable[[], Integrator]:
        if name in INTEGRATORS:
            raise ValueError(f"an integrator named {name!r} is already registered")
        INTEGRATORS[name] = Entry(factory, description)
        return factory

    return add


def get_integrator(name_or_instance: str | Integrator) -> Integrator:
    """An integrator from a registered name, or the instance itself."""
    if isinstance(name_or_instance, Integrator):
        return name_or_instance
    if not isinstance(name_or_instance, str):
        raise TypeError(f"expected an integrator name or instance, got {type(name_or_instance).__name__}")
    if name_or_instance not in INTEGRATORS:
        raise ValueError(f"unknown integrator {name_or_instance!r}; registered: {', '.join(sorted(INTEGRATORS))}")
    return INTEGRATORS[name_or_instance].factory()


def _add(name: str, description: str, factory: Callable[[], Integrator]) -> None:
    register(name, description)(factory)


_add("ddim", "DDIM = DPM-Solver-1: first-order exponential integrator, 1 NFE/step",
     lambda: DPMSolverMultistep(1, "data"))
for _p, _tag, _paper in (("data", "dpmpp", "DPM-Solver++"), ("noise", "dpm", "DPM-Solver")):
    for _k in (2, 3):
        _add(f"{_tag}_{_k}m", f"{_paper} multistep order {_k}, lower-order warm-up, 1 NFE/step",
             lambda k=_k, p=_p: DPMSolverMultistep(k, p))
        _add(f"{_tag}_{_k}s", f"{_paper} singlestep order {_k}, {_k} NFE/step",
             lambda k=_k, p=_p: DPMSolverSinglestep(k, p))
        _add(f"{_tag}_adaptive_{_k - 1}{_k}", f"{_paper}-{_k - 1}{_k} adaptive embedded pair, {_k} NFE/step",
             lambda k=_k, p=_p: DPMSolverAdaptive(k, p))
    _add(f"{_tag}_3m_sw", f"{_paper} multistep order 3 with a singlestep warm-up (global order 3, +1 NFE)",
         lambda p=_p: DPMSolverMultistep(3, p, warmup="singlestep"))
