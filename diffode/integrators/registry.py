"""Named integrator configurations: ``get_integrator("dpmpp_2m")``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from diffode.integrators.adaptive import DPMSolverAdaptive
from diffode.integrators.base import Integrator
from diffode.integrators.ddpm import DDPM
from diffode.integrators.deis import DEIS
from diffode.integrators.euler_maruyama import EulerMaruyama
from diffode.integrators.heun import Heun
from diffode.integrators.ipndm import IPNDM
from diffode.integrators.langevin import PredictorCorrector
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.sde_dpm import SDEDPMSolverMultistep
from diffode.integrators.singlestep import DPMSolverSinglestep
from diffode.integrators.torchdiffeq_bridge import METHODS as TORCHDIFFEQ_METHODS
from diffode.integrators.torchdiffeq_bridge import torchdiffeq_integrator
from diffode.integrators.unipc import UniPC

__all__ = ["FAMILIES", "INTEGRATORS", "get_integrator", "register"]


@dataclass(frozen=True)
class Entry:
    """A registered configuration: a factory and a one-line description."""

    factory: Callable[[], Integrator]
    description: str


INTEGRATORS: dict[str, Entry] = {}

#: Families of integrators named ``prefix:member`` (``"torchdiffeq:rk4"``): the prefix maps to a
#: factory of the member's name, a description, and the members.
FAMILIES: dict[str, tuple[Callable[[str], Integrator], str, tuple[str, ...]]] = {
    "torchdiffeq": (torchdiffeq_integrator, "any torchdiffeq method on the probability-flow ODE in lambda",
                    tuple(TORCHDIFFEQ_METHODS)),
}


def register(name: str, description: str):
    """Decorator (or call with a factory) that registers a named integrator configuration."""

    def add(factory: Callable[[], Integrator]) -> Callable[[], Integrator]:
        if name in INTEGRATORS:
            raise ValueError(f"an integrator named {name!r} is already registered")
        INTEGRATORS[name] = Entry(factory, description)
        return factory

    return add


def get_integrator(name_or_instance: str | Integrator) -> Integrator:
    """An integrator from a registered name, a family member, a ``package.module:name`` reference, or the instance.

    A family member is ``prefix:member`` with a prefix of :data:`FAMILIES` (``"torchdiffeq:rk4"``).

    A reference names an :class:`~diffode.integrators.Integrator` subclass (built with its default
    arguments), an instance, or a factory that returns one; importing the module may also register
    names, so ``my_package.solvers:my_solver`` works for a registered name defined there too.
    """
    if isinstance(name_or_instance, Integrator):
        return name_or_instance
    if not isinstance(name_or_instance, str):
        raise TypeError(f"expected an integrator name or instance, got {type(name_or_instance).__name__}")
    if name_or_instance in INTEGRATORS:
        return INTEGRATORS[name_or_instance].factory()
    prefix, _, member = name_or_instance.partition(":")
    if prefix in FAMILIES:
        return FAMILIES[prefix][0](member)
    if ":" in name_or_instance:
        return _from_reference(name_or_instance)
    raise ValueError(f"unknown integrator {name_or_instance!r}; registered: {', '.join(sorted(INTEGRATORS))}; "
                     f"families: {', '.join(f'{p}:METHOD' for p in FAMILIES)}; "
                     "or give an integrator of your own as package.module:name")


def _from_reference(reference: str) -> Integrator:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"an integrator reference must look like package.module:name, got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {module_name!r} for the integrator {reference!r}: {error}") from None
    if attribute in INTEGRATORS and not hasattr(module, attribute):
        return INTEGRATORS[attribute].factory()
    obj = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attribute!r} (from the integrator {reference!r})")
        obj = getattr(obj, part)
    if isinstance(obj, Integrator):
        return obj
    if callable(obj):
        made = obj()
        if isinstance(made, Integrator):
            return made
        raise TypeError(f"{reference!r} returned {type(made).__name__}, not a diffode Integrator")
    raise TypeError(f"{reference!r} is a {type(obj).__name__}, not an Integrator class, instance or factory")


def _add(name: str, description: str, factory: Callable[[], Integrator]) -> None:
    register(name, description)(factory)


_add("ddim", "DDIM = DPM-Solver-1: first-order exponential integrator, 1 NFE/step",
     lambda: DPMSolverMultistep(1, "data"))
for _p, _tag, _paper in (("data", "dpmpp", "DPM-Solver++"), ("noise", "dpm", "DPM-Solver")):
    for _k in (2, 3):
        _add(f"{_tag}_{_k}m", f"{_paper} multistep order {_k}, lower-order warm-up, 1 NFE/step",
             lambda k=_k, p=_p: DPMSolverMultistep(k, p))
        _add(f"{_tag}_{_k}s", f"{_paper} singlestep order {_k}, {_k} NFE/step (a budget split as DPM-Solver-fast)",
             lambda k=_k, p=_p: DPMSolverSinglestep(k, p))
        _add(f"{_tag}_adaptive_{_k - 1}{_k}", f"{_paper}-{_k - 1}{_k} adaptive embedded pair, {_k} NFE/step",
             lambda k=_k, p=_p: DPMSolverAdaptive(k, p))
    _add(f"{_tag}_3m_sw", f"{_paper} multistep order 3 with a singlestep warm-up (global order 3, +1 NFE)",
         lambda p=_p: DPMSolverMultistep(3, p, warmup="singlestep"))
_add("heun", "EDM's Heun (Karras et al. 2022) in sigma/alpha, order 2, 2 NFE/step", Heun)
for _v in ("bh1", "bh2"):
    for _k in (2, 3):
        _add(f"unipc_{_v}_{_k}", f"UniPC-{_k} ({_v}, data form): UniP-{_k} predictor, UniC corrector, order {_k + 1}, 1 NFE/step",
             lambda k=_k, v=_v: UniPC(k, "data", v))
_add("unip_3", "UniP-3 alone (bh2, data form, no corrector): order 3, 1 NFE/step",
     lambda: UniPC(3, "data", "bh2", corrector=False))
for _p, _tag, _paper in (("data", "dpmpp", "DPM-Solver++"), ("noise", "dpm", "DPM-Solver")):
    _add(f"{_tag}_4m", f"{_paper} multistep order 4 (exponential Adams-Bashforth 4), lower-order warm-up, 1 NFE/step",
         lambda p=_p: DPMSolverMultistep(4, p))
_add("ipndm", "iPNDM: Adams-Bashforth 4 on eps in sigma/alpha, equal-step weights, lower-order warm start, 1 NFE/step",
     lambda: IPNDM(4))
_add("ipndm_v", "iPNDM with variable-step weights (DEIS rhoAB-3): order 4 on any grid, 1 NFE/step",
     lambda: IPNDM(4, variable_step=True))
for _r in (1, 2, 3):
    _add(f"deis_tab{_r}", f"DEIS tAB-{_r}: eps extrapolated in t (degree {_r}), exponential weights, order {_r + 1}, "
         "1 NFE/step", lambda r=_r: DEIS(r + 1))

# Stochastic samplers (integrator.stochastic: they draw from the solve's noise source).
_add("euler_maruyama", "stochastic: Euler-Maruyama in time on the reverse SDE, strong/weak order 1, 1 NFE/step",
     EulerMaruyama)
_add("pc_langevin", "stochastic: score_sde's predictor-corrector, reverse diffusion + 1 Langevin step at snr=0.16, "
     "2 NFE/step", PredictorCorrector)
_add("ddpm", "stochastic: DDPM ancestral sampling (eta=1; eta=0 is DDIM), 1 NFE/step", DDPM)
_add("sde_dpmpp_1", "stochastic: SDE-DPM-Solver++ order 1 (= DDPM ancestral), 1 NFE/step",
     lambda: SDEDPMSolverMultistep(1))
_add("sde_dpmpp_2m", "stochastic: SDE-DPM-Solver++(2M), midpoint (diffusers/k-diffusion default), 1 NFE/step",
     lambda: SDEDPMSolverMultistep(2, "dpmsolver"))
_add("sde_dpmpp_2m_heun", "stochastic: SDE-DPM-Solver++(2M), heun variant, 1 NFE/step",
     lambda: SDEDPMSolverMultistep(2, "taylor"))
_add("sde_dpmpp_3m", "stochastic: SDE-DPM-Solver++(3M), exact weights, 1 NFE/step",
     lambda: SDEDPMSolverMultistep(3, "taylor"))
