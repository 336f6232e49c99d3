r"""``DiffodeScheduler``: diffode's multistep integrators as a diffusers scheduler.

```python
from diffode.integrations.diffusers import DiffodeScheduler

pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config)                # DPM-Solver++ 2M
pipe.scheduler = DiffodeScheduler.from_config(pipe.scheduler.config, integrator="dpmpp_3m")
image = pipe(prompt, num_inference_steps=20).images[0]
```

**How the two time axes correspond.** A diffusers model is trained on discrete steps
$k = 0, \dots, N-1$ with $\bar\alpha_k$ (``alphas_cumprod``). diffode's
:class:`~diffode.schedules.DiscreteVP` puts step $k$ at the continuous time $t = (k+1)/N$, where
$\alpha_t = \sqrt{\bar\alpha_k}$ and $\sigma_t = \sqrt{1-\bar\alpha_k}$ exactly, the values diffusers
uses at timestep $k$. The pipeline feeds the model the integer timestep $k$ itself; diffode's own
samplers feed $(t - 1/N)\cdot 1000 = k$ (for $N = 1000$), so both call the model identically.

**The configuration.** The scheduler reads ``DPMSolverMultistepScheduler``'s configuration keys and
gives each its diffusers meaning:

* the method: ``solver_order`` (1, 2 or 3), ``algorithm_type`` (``"dpmsolver++"``: data
  prediction; ``"dpmsolver"``: noise prediction) and ``solver_type`` (``"midpoint"``, ``"heun"``)
  choose a :class:`~diffode.integrators.DPMSolverMultistep`; ``integrator`` names a registered one
  instead (see :class:`DiffodeScheduler`);
* the grid: ``timestep_spacing``, ``steps_offset`` and ``lambda_min_clipped`` place the steps on
  the training timesteps; ``use_karras_sigmas`` (Karras et al.'s $\rho = 7$ grid) and
  ``use_lu_lambdas`` or ``use_exponential_sigmas`` (equal steps in $\lambda$) place them between
  the largest and the smallest training noise level with diffode's grids
  (:class:`~diffode.integrators.grids.Karras`, :class:`~diffode.integrators.grids.UniformLambda`),
  and the pipeline gets diffusers' integer timesteps for them;
* the orders of the last steps: ``lower_order_final`` (fewer than 15 steps: first order on the last
  step, at most second on the one before) and ``euler_at_final`` (first order on the last step);
* the last step: ``final_sigmas_type``, see below;
* the data prediction: ``thresholding``, ``dynamic_thresholding_ratio`` and ``sample_max_value``
  (Imagen's dynamic thresholding as diffusers applies it: :func:`~diffode.models.dynamic_thresholding`
  with ``max_val=1`` and ``max_scale=sample_max_value``);
  ``variance_type="learned"`` or ``"learned_range"``: the model's output carries variance channels
  after the prediction's, which are dropped.

What has no meaning for diffode is refused with an error that names the key when it would change
the result (``use_beta_sigmas``, ``use_flow_sigmas``, ``use_dynamic_shifting``, the SDE variants of
``algorithm_type``, ``prediction_type="flow_prediction"``) and warned about when it would not
(``flow_shift`` without flow sigmas, which diffusers ignores as well).

**The final step.** With ``final_sigmas_type="zero"`` (diffusers' default) the last step goes to
$\sigma = 0$, $\alpha = 1$, i.e. $\lambda = +\infty$. The first-order step to that point is exact in
the limit: $x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t(1 - e^{-h})\hat x_0 \to \hat x_0$ as
$h \to \infty$ (the noise form gives the same), so the last step returns the data prediction at the
last timestep: diffode's ``denoise_to_zero``. With ``"sigma_min"`` the last step is an ordinary step
to step 0, $t = 1/N$ (on a Karras or $\lambda$ grid, which ends there already, a step of length 0).

**Which integrators.** A scheduler sees one model output per step, at the step's start. That fits
the multistep integrators with the lower-order warm-up (``"ddim"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``,
``"dpm_2m"``, ``"dpm_3m"`` and any registered :class:`~diffode.integrators.DPMSolverMultistep`
configuration). Singlestep and adaptive integrators, and the singlestep warm-up (``"*_3m_sw"``),
evaluate the model at points inside a step, which the pipeline never provides: the scheduler refuses
them with an error (use diffode's own sampler for those).

**Agreement with diffusers.** The orders follow ``DPMSolverMultistepScheduler``'s rule (warm-up;
with ``lower_order_final`` and fewer than 15 steps, first order on the last step and at most second
order on the one before; the step to $\sigma = 0$ is always first order). With ``solver_order`` 1
or 2 the scheduler computes what diffusers computes, to float32 round-off, for either algorithm
type and solver type, every grid and thresholding. diffode's order-3 multistep methods use the
exact third-order weights and so differ from diffusers' ``solver_order=3``, whose last term has half
that weight (and which converges at order 2 only). Where diffusers fails, the scheduler does not:
when the first timestep of a grid repeats (998 on the Karras and exponential grids of the
``"squaredcos_cap_v2"`` schedule, truncated by float32 round-off), diffusers starts at the second
and runs out of steps; with ``final_sigmas_type="sigma_min"`` on a Karras or $\lambda$ grid, whose last
step has length 0, diffusers' ``"heun"`` second-order step divides 0 by 0 (the scheduler leaves the
state as it is).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError("diffode.integrations.diffusers needs diffusers: pip install 'diffode[diffusers]'") from error

from diffode._utils import check_choice, check_finite_number, check_int, preview
from diffode.integrations import LOWER_ORDER_FINAL_BELOW
from diffode.integrators.base import Integrator, State
from diffode.integrators.grids import Karras, TimeGrid, UniformLambda
from diffode.integrators.multistep import DPMSolverMultistep
from diffode.integrators.registry import INTEGRATORS, get_integrator
from diffode.models.corrections import dynamic_thresholding
from diffode.models.parameterizations import get_parameterization
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint
from diffode.schedules.vp import DiscreteVP

__all__ = ["DiffodeScheduler", "supported_integrators", "training_betas"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "noise", "v_prediction": "v", "sample": "data"}
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# diffusers' algorithm types and what the integrator predicts; "deis" arrives with DEIS
# configurations and means DPM-Solver++ to DPMSolverMultistepScheduler as well.
ALGORITHM_TYPES = {"dpmsolver++": "data", "dpmsolver": "noise", "deis": "data"}
STOCHASTIC_ALGORITHM_TYPES = ("sde-dpmsolver++", "sde-dpmsolver")
# diffusers' names of the two second-order variants, and diffode's.
SOLVER_TYPES = {"midpoint": "dpmsolver", "heun": "taylor"}
# Other values under the same key: diffode's names, and DEIS's and UniPC's (which come with their
# configurations and mean "midpoint" to DPMSolverMultistepScheduler as well).
SOLVER_TYPE_ALIASES = {"dpmsolver": "midpoint", "taylor": "heun", "logrho": "midpoint", "bh1": "midpoint",
                       "bh2": "midpoint"}
# DDPMScheduler's fixed variances say how its ancestral sampler draws noise: nothing an ODE uses.
VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
LEARNED_VARIANCES = ("learned", "learned_range")
# The grids between the largest and the smallest training noise level, by configuration key.
SIGMA_GRIDS: dict[str, TimeGrid] = {"use_karras_sigmas": Karras(rho=7.0), "use_lu_lambdas": UniformLambda(),
                                    "use_exponential_sigmas": UniformLambda()}
# Keys that choose the method, which an explicit integrator replaces (and the reverse).
METHOD_KEYS = ("solver_order", "algorithm_type")


def training_betas(beta_schedule: str, num_train_timesteps: int, beta_start: float, beta_end: float,
                   trained_betas: Sequence[float] | Tensor | None = None, rescale_betas_zero_snr: bool = False) -> Tensor:
    r"""The training betas of a diffusers scheduler configuration, in float32.

    Float32 on purpose: it is the precision in which diffusers' schedulers (training ones included)
    compute them, so the model's schedule is reproduced to the bit.

    Args:
        beta_schedule: ``"linear"``, ``"scaled_linear"`` (linear in $\sqrt\beta$, Stable Diffusion's)
            or ``"squaredcos_cap_v2"`` (the cosine schedule, each beta capped at 0.999).
        num_train_timesteps: $N$.
        beta_start: The first beta (linear schedules).
        beta_end: The last beta (linear schedules).
        trained_betas: Explicit betas, which override the schedule.
        rescale_betas_zero_snr: Rescale to zero terminal SNR (Lin et al., 2023).
    """
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    if trained_betas is not None:
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64), dtype=torch.float32).reshape(-1)
        if betas.numel() != num_train_timesteps:
            raise ValueError(f"trained_betas has {betas.numel()} entries but num_train_timesteps={num_train_timesteps}")
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    else:
        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2.0) ** 2

        n = num_train_timesteps
        betas = torch.tensor([min(1.0 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float32)
    if rescale_betas_zero_snr:
        # Shift sqrt(alphas_cumprod) so that it ends at 0 and scale it so that it starts where it did.
        root = torch.cumprod(1.0 - betas, 0).sqrt()
        first, last = root[0].clone(), root[-1].clone()
        cumprod = ((root - last) * (first / (first - last))) ** 2
        betas = 1.0 - torch.cat([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return betas


def _one_evaluation_per_step(integrator: Integrator) -> bool:
    # What the integrator declares: a run of n steps costs n model evaluations. Stochastic samplers
    # are left out: the scheduler's step() has no noise source to give them.
    return not integrator.adaptive and not integrator.stochastic and all(integrator.evaluations(integrator.step_orders(n)) == n for n in (1, 2, 3, 4))


def supported_integrators() -> list[str]:
    """The registered integrators that need one model evaluation per step (usable in a scheduler)."""
    return [name for name in sorted(INTEGRATORS) if _one_evaluation_per_step(get_integrator(name))]


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _method(integrator: str | None, solver_order: int | None, algorithm_type: str | None,
            solver_type: str | None) -> tuple[Integrator, int, str, str]:
    """The integrator the method keys stand for, with their values as the configuration keeps them."""
    if algorithm_type in STOCHASTIC_ALGORITHM_TYPES:
        raise ValueError(f"algorithm_type={algorithm_type!r} is a stochastic sampler, which DiffodeScheduler does not "
                         "provide (it integrates the probability-flow ODE); use 'dpmsolver++' or 'dpmsolver'")
    if algorithm_type is not None:
        check_choice("algorithm_type", algorithm_type, ALGORITHM_TYPES)
    if solver_order is not None:
        solver_order = check_int("solver_order", solver_order, low=1)
        if solver_order > 3:
            raise ValueError(f"solver_order must be 1, 2 or 3, got {solver_order}")
    if solver_type is not None:
        solver_type = SOLVER_TYPE_ALIASES.get(solver_type, solver_type)
        check_choice("solver_type", solver_type, SOLVER_TYPES)
    if integrator is None:
        chosen = DPMSolverMultistep(solver_order or 2, ALGORITHM_TYPES[algorithm_type or "dpmsolver++"],
                                    SOLVER_TYPES[solver_type or "midpoint"])
    else:
        if not isinstance(integrator, str):
            raise TypeError(f"integrator must be the name of a registered diffode integrator (the config is saved as "
                            f"JSON), got {type(integrator).__name__}; register a custom one with "
                            "diffode.integrators.register")
        chosen = get_integrator(integrator)
        if chosen.stochastic:
            raise ValueError(f"integrator {integrator!r} is a stochastic sampler, which DiffodeScheduler does not run; "
                             f"use one of {', '.join(supported_integrators())}, or diffode.solve with seeds=")
        if not _one_evaluation_per_step(chosen):
            raise ValueError(f"integrator {integrator!r} evaluates the model inside its steps, but a diffusers pipeline "
                             f"makes one model call per step; use one of {', '.join(supported_integrators())} "
                             "(or diffode's own sampler for singlestep and adaptive integrators)")
        if solver_order is not None and solver_order != chosen.order:
            raise ValueError(f"integrator={integrator!r} has order {chosen.order} but solver_order={solver_order}; "
                             "give one of the two")
        if algorithm_type is not None and ALGORITHM_TYPES[algorithm_type] != chosen.predict:
            raise ValueError(f"integrator={integrator!r} predicts {chosen.predict} but algorithm_type="
                             f"{algorithm_type!r} predicts {ALGORITHM_TYPES[algorithm_type]}; give one of the two")
        # solver_type is the DPM-Solver family's second-order variant; other integrators have none.
        variant = getattr(chosen, "solver_type", None)
        if solver_type is not None:
            if variant is None:
                raise ValueError(f"solver_type={solver_type!r} chooses a DPM-Solver's second-order variant; "
                                 f"integrator={integrator!r} has none: leave solver_type out")
            chosen.solver_type = SOLVER_TYPES[solver_type]
    algorithm = {"data": "dpmsolver++", "noise": "dpmsolver"}[chosen.predict]
    variant = getattr(chosen, "solver_type", None)
    # (A configuration keeps diffusers' default where the integrator has no variant.)
    named_solver_type = {value: key for key, value in SOLVER_TYPES.items()}[variant] if variant else "midpoint"
    return chosen, chosen.order, algorithm, named_solver_type


class _GivenOutput(Predictor):
    """The model output the pipeline computed for this step, as the Predictor the integrator calls.

    It answers only at the step's own state and point: an integrator that asks anywhere else would
    need a model evaluation the pipeline cannot give.
    """

    def __init__(self, scheduler: DiffodeScheduler, output: Tensor, sample: Tensor, point: TimePoint):
        self.schedule = scheduler.schedule
        self.scheduler = scheduler
        self.output = output
        self.sample = sample
        self.point = point

    def predict(self, x: Tensor, point: TimePoint, kind: str):
        if x is not self.sample or point != self.point:
            raise RuntimeError("the integrator asked for a model output away from the step's start, which a "
                               "diffusers pipeline (one model call per step) cannot provide")
        return self.scheduler._prediction(self.output, x, point, kind)


class DiffodeScheduler(SchedulerMixin, ConfigMixin):
    r"""A diffusers scheduler that runs a diffode multistep integrator (see the module docstring).

    The keys are ``DPMSolverMultistepScheduler``'s, with its defaults and meanings, plus
    ``integrator``. The method is either a registered ``integrator`` or the one that
    ``solver_order`` and ``algorithm_type`` describe; giving both is an error unless they agree.
    :meth:`from_config` lets its keyword arguments choose: ``from_config(config, integrator=...)``
    replaces the configuration's ``solver_order`` and ``algorithm_type``, and
    ``from_config(config, solver_order=...)`` (or ``algorithm_type=...``) its ``integrator``. The
    configuration always records the method in diffusers' keys as well, so that a diffusers
    scheduler loaded from it runs the same method (diffusers' own third-order weights at order 3).

    Args:
        num_train_timesteps: $N$, the number of training steps.
        beta_start: The first training beta (linear schedules).
        beta_end: The last training beta (linear schedules).
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``.
        trained_betas: Explicit training betas (override ``beta_schedule``).
        prediction_type: What the model predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        integrator: A registered diffode integrator that needs one model evaluation per step:
            ``"dpmpp_2m"``, ``"dpmpp_3m"``, ``"ddim"``, ``"dpm_2m"``, ``"dpm_3m"``
            (:func:`supported_integrators` lists them all); ``None`` (default): the one of
            ``solver_order`` and ``algorithm_type``.
        solver_type: The second-order variant: ``"midpoint"`` (diffode's ``"dpmsolver"``) or
            ``"heun"`` (``"taylor"``); ``None`` keeps the integrator's own (``"midpoint"``). DEIS's
            and UniPC's values (``"logrho"``, ``"bh1"``, ``"bh2"``), which come with their
            configurations, mean ``"midpoint"``, as to diffusers' DPM-Solver schedulers.
        lower_order_final: First order on the last step and at most second order on the one before,
            for fewer than 15 steps.
        final_sigmas_type: ``"zero"`` (the last step returns the data prediction) or
            ``"sigma_min"`` (the last step ends at training step 0).
        timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"``, as diffusers' DPM-Solver.
        steps_offset: Added to the timesteps of ``"leading"`` spacing.
        lambda_min_clipped: Training steps whose half log-SNR is below this are not used by the
            spacings (as diffusers; -5.1 suits cosine schedules).
        rescale_betas_zero_snr: Rescale the betas to zero terminal SNR; the last
            $\bar\alpha$ is then set to $2^{-24}$ so that $\lambda$ stays finite (as diffusers).
        solver_order: The order of the multistep method, 1 (DDIM), 2 or 3 (diffode's exact
            third-order weights); ``None``: the integrator's, or 2.
        thresholding: Pass every data prediction through diffusers' dynamic thresholding
            (:func:`~diffode.models.dynamic_thresholding` with ``max_scale=sample_max_value``).
        dynamic_thresholding_ratio: Its quantile.
        sample_max_value: Its largest scale.
        algorithm_type: ``"dpmsolver++"`` (the data prediction is integrated) or ``"dpmsolver"``
            (the noise prediction); ``None``: the integrator's, or ``"dpmsolver++"``. DEIS
            configurations' ``"deis"`` means ``"dpmsolver++"``; the SDE variants are refused.
        euler_at_final: First order on the last step whatever the number of steps.
        use_karras_sigmas: Karras et al.'s grid ($\rho = 7$) from the largest to the smallest
            training noise level, instead of ``timestep_spacing``.
        use_exponential_sigmas: Equal steps in $\lambda$ over the same range (the same grid as
            ``use_lu_lambdas``).
        use_beta_sigmas: Refused: diffode has no grid spaced by Beta-distribution quantiles.
        use_lu_lambdas: Equal steps in $\lambda$ over the same range.
        use_flow_sigmas: Refused: flow-matching schedules are not variance-preserving step tables.
        flow_shift: Only used with ``use_flow_sigmas`` (warned about otherwise).
        variance_type: ``"learned"`` or ``"learned_range"`` when the model's output carries variance
            channels after the prediction's (they are dropped); ``None`` or DDPM's fixed variances
            otherwise.
        use_dynamic_shifting: Refused (flow-matching models).
        time_shift_type: Only used with ``use_dynamic_shifting``.

    Attributes:
        timesteps: The discrete timesteps of the current run (after :meth:`set_timesteps`).
        schedule: The diffode :class:`~diffode.schedules.DiscreteVP` of the training schedule.
        integrator: The diffode integrator.
        parameterization: The diffode parameterization of ``prediction_type``.
        init_noise_sigma: 1 (the initial noise is standard normal).
        order: 1: one model evaluation per step.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Sequence[float] | None = None,
                 prediction_type: str = "epsilon", integrator: str | None = None, solver_type: str | None = None,
                 lower_order_final: bool = True, final_sigmas_type: str = "zero",
                 timestep_spacing: str = "linspace", steps_offset: int = 0,
                 lambda_min_clipped: float = -math.inf, rescale_betas_zero_snr: bool = False,
                 solver_order: int | None = None, thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 algorithm_type: str | None = None, euler_at_final: bool = False, use_karras_sigmas: bool = False,
                 use_exponential_sigmas: bool = False, use_beta_sigmas: bool = False, use_lu_lambdas: bool = False,
                 use_flow_sigmas: bool = False, flow_shift: float = 1.0, variance_type: str | None = None,
                 use_dynamic_shifting: bool = False, time_shift_type: str = "exponential"):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        if prediction_type == "flow_prediction":
            raise ValueError("prediction_type='flow_prediction' (flow-matching models) is not supported by "
                             "DiffodeScheduler; use 'epsilon', 'v_prediction' or 'sample'")
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        check_choice("variance_type", variance_type, VARIANCE_TYPES)
        flags = dict(lower_order_final=lower_order_final, rescale_betas_zero_snr=rescale_betas_zero_snr,
                     thresholding=thresholding, euler_at_final=euler_at_final, use_karras_sigmas=use_karras_sigmas,
                     use_exponential_sigmas=use_exponential_sigmas, use_beta_sigmas=use_beta_sigmas,
                     use_lu_lambdas=use_lu_lambdas, use_flow_sigmas=use_flow_sigmas,
                     use_dynamic_shifting=use_dynamic_shifting)
        for name, value in flags.items():
            _check_flag(name, value)
        for name in ("use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting"):
            if flags[name]:
                raise ValueError(f"{name}=True is not supported by DiffodeScheduler: "
                                 + ("diffode has no grid spaced by Beta-distribution quantiles; use use_karras_sigmas, "
                                    "use_lu_lambdas or timestep_spacing" if name == "use_beta_sigmas" else
                                    "it belongs to flow-matching models, whose schedules this scheduler does not run"))
        if check_finite_number("flow_shift", flow_shift) != 1.0:
            warnings.warn(f"flow_shift={flow_shift} has no effect: it applies to use_flow_sigmas, which "
                          "DiffodeScheduler does not provide (diffusers ignores it without them too)", stacklevel=2)
        grids = [name for name in SIGMA_GRIDS if flags[name]]
        if len(grids) > 1:
            raise ValueError(f"use only one of use_karras_sigmas, use_lu_lambdas and use_exponential_sigmas, got "
                             f"{' and '.join(f'{name}=True' for name in grids)}")
        self._grid_key = grids[0] if grids else None
        if thresholding:
            ratio = check_finite_number("dynamic_thresholding_ratio", dynamic_thresholding_ratio)
            if not 0.0 < ratio <= 1.0:
                raise ValueError(f"dynamic_thresholding_ratio must lie in (0, 1], got {ratio}")
            if check_finite_number("sample_max_value", sample_max_value) < 1.0:
                raise ValueError(f"sample_max_value must be >= 1 (the scale of thresholding lies in "
                                 f"[1, sample_max_value]), got {sample_max_value}")
        self.integrator, order, algorithm, named_solver_type = _method(integrator, solver_order, algorithm_type,
                                                                       solver_type)
        # The configuration records the method in diffusers' keys too, so that diffusers' schedulers
        # loaded from it run the same method.
        self.register_to_config(solver_order=order, algorithm_type=algorithm, solver_type=named_solver_type)
        self.betas = training_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas,
                                    rescale_betas_zero_snr)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24
        self.schedule = DiscreteVP(alphas_cumprod=self.alphas_cumprod.double(), clip_lambda=None)
        self.parameterization = get_parameterization(PREDICTION_TYPES[prediction_type])
        self._data_parameterization = get_parameterization("data")
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._points: list[TimePoint] | None = None
        self._orders: list[int] = []
        self._state: State = self.integrator.init()
        self._step_index: int | None = None
        self._begin_index: int | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any] | None = None, return_unused_kwargs: bool = False, **kwargs: Any):
        """A scheduler from a diffusers configuration, its keyword arguments replacing the configuration's.

        As ``ConfigMixin.from_config``, and: an ``integrator`` argument replaces the configuration's
        ``solver_order`` and ``algorithm_type``, and a ``solver_order`` or ``algorithm_type``
        argument replaces its ``integrator`` (the two describe the same choice).

        Args:
            config: A scheduler configuration (``scheduler.config`` of any diffusers scheduler).
            return_unused_kwargs: Also return the arguments and keys that were not used.
            **kwargs: Configuration keys to replace.
        """
        if isinstance(config, dict):
            config = dict(config)
            if "integrator" in kwargs:
                for key in METHOD_KEYS:
                    config.pop(key, None)
            elif any(key in kwargs for key in METHOD_KEYS):
                config.pop("integrator", None)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- the grid ---------------------------------------------------------------------------------

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """diffusers' DPM-Solver timesteps for ``n`` steps (largest first)."""
        config = self.config
        big_n = config.num_train_timesteps
        # Leave out the trailing training steps whose lambda is below the clip.
        lams = self.schedule.lambda_(self.schedule.t_array)
        last = big_n - int((lams < config.lambda_min_clipped).sum())
        if config.timestep_spacing == "linspace":
            steps = np.linspace(0, last - 1, n + 1).round()[::-1][:-1]
        elif config.timestep_spacing == "leading":
            ratio = last // (n + 1)
            steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1] + config.steps_offset
        else:
            steps = np.arange(last, 0, -big_n / n).round() - 1
        return steps.astype(np.int64)

    def _grid_timesteps(self, points: Sequence[TimePoint]) -> np.ndarray:
        r"""diffusers' integer timesteps of a Karras or $\lambda$ grid's points.

        A point's fractional training step comes from $\log\tilde\sigma = -\lambda$ interpolated
        linearly between the training steps. diffusers rounds it to the nearest step for the Karras
        and Lu grids, except on the ``"squaredcos_cap_v2"`` schedule; there, and for
        ``use_exponential_sigmas``, it keeps the fraction and then stores the timesteps as integers,
        which truncates. Both are reproduced, so that the pipeline calls the model as with diffusers.
        """
        log_sigmas = (-self.schedule.lambda_(self.schedule.t_array)).numpy()  # increasing in the step
        steps = np.interp([-p.lam for p in points], log_sigmas, np.arange(len(log_sigmas), dtype=np.float64))
        if self._grid_key != "use_exponential_sigmas" and self.config.beta_schedule != "squaredcos_cap_v2":
            return steps.round().astype(np.int64)
        steps = np.trunc(steps).astype(np.int64)
        if self._grid_key != "use_lu_lambdas":
            # The first point is the last training step, N - 1. diffusers' Karras and exponential
            # grids find its step by comparing the float64 log of their float32 sigma with the float32
            # log of the same sigma: where that rounds up, the step comes out just below N - 1 and
            # truncates to N - 2. (Its Lu grid starts from the float32 log itself.)
            last = self.alphas_cumprod[-1:]
            sigma = ((1.0 - last) / last).sqrt().numpy()  # float32, computed as diffusers computes it
            if np.log(sigma.astype(np.float64))[0] < np.log(sigma)[0]:
                steps[0] -= 1
        return steps

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """Lay out the steps of a run and reset the integrator state (call before every run).

        Args:
            num_inference_steps: The number of steps (= model evaluations).
            device: Where to put :attr:`timesteps`.
            timesteps: Custom timesteps, strictly decreasing integers in ``[0, N-1]`` (instead of
                ``num_inference_steps``; not with a Karras or $\\lambda$ grid).
        """
        big_n = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            if self._grid_key is not None:
                raise ValueError(f"timesteps cannot be given with {self._grid_key}=True, whose grid sets the timesteps")
            steps = np.asarray(timesteps.cpu() if isinstance(timesteps, Tensor) else timesteps)
            if steps.ndim != 1 or steps.size < 1 or not np.issubdtype(steps.dtype, np.integer):
                raise ValueError(f"timesteps must be a non-empty 1-D sequence of integers, got {preview(steps)}")
            what = "timesteps"
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
            steps = None if self._grid_key is not None else self._spaced_timesteps(num_inference_steps)
            what = f"timestep_spacing={self.config.timestep_spacing!r} with {num_inference_steps} steps"
        if steps is None:
            # Between the largest and the smallest training noise level; the points are the grid's
            # own, the pipeline calls the model at diffusers' training steps (which may repeat).
            n = num_inference_steps
            times = [1.0] if n == 1 else SIGMA_GRIDS[self._grid_key].times(self.schedule, 1.0, 1.0 / big_n, n - 1)
            points = self.schedule.points(times)
            steps = self._grid_timesteps(points)
        else:
            steps = steps.astype(np.int64)
            outside = ((steps < 0) | (steps > big_n - 1)).nonzero()[0]
            if outside.size:
                i = int(outside[0])
                raise ValueError(f"{what} gives timesteps outside [0, {big_n - 1}]: timesteps[{i}] = {steps[i]}")
            rising = (np.diff(steps) >= 0).nonzero()[0]
            if rising.size:
                i = int(rising[0])
                hint = "; use fewer steps or timestep_spacing='trailing'" if what != "timesteps" else ""
                raise ValueError(f"{what} gives timesteps that are not strictly decreasing: timesteps[{i}] = "
                                 f"{steps[i]}, timesteps[{i + 1}] = {steps[i + 1]}{hint}")
            points = self.schedule.points(torch.from_numpy((steps.astype(np.float64) + 1.0) / big_n))
        n = len(steps)
        if self.config.final_sigmas_type == "sigma_min":
            points.append(self.schedule.point(1.0 / big_n))
        below = LOWER_ORDER_FINAL_BELOW if self.config.lower_order_final else False
        orders = self.integrator.step_orders(n, below)
        if self.config.euler_at_final:
            orders[-1] = 1
        self._points = points
        self._orders = orders
        self.timesteps = torch.from_numpy(steps).to(device)
        self.num_inference_steps = n
        self._state = self.integrator.init()
        self._step_index = None
        self._begin_index = None

    @property
    def times(self) -> list[float]:
        """diffode's continuous times of the run: one per timestep (with ``timestep_spacing``,
        $(k+1)/N$), then $1/N$ with ``"sigma_min"``."""
        return [] if self._points is None else [p.t for p in self._points]

    @property
    def step_orders(self) -> list[int]:
        """The order planned for each step (the step to $\\sigma = 0$ is a data prediction, first order)."""
        return list(self._orders)

    @property
    def step_index(self) -> int | None:
        """The index of the next step (``None`` before the first)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first step, when a pipeline set it (img2img)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at step ``begin_index`` (pipelines that start part-way, such as img2img, call this).

        Args:
            begin_index: The index into :attr:`timesteps` of the first step.
        """
        self._begin_index = begin_index

    def _init_step_index(self, timestep: int | Tensor) -> None:
        if self._begin_index is not None:
            self._step_index = self._begin_index
            self._start_at(self._begin_index)
            return
        matches = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.device)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep!r} is not one of this run's timesteps {preview(self.timesteps.tolist())}")
        self._step_index = int(matches[0])
        self._start_at(self._step_index)

    def _start_at(self, first: int) -> None:
        # A run that starts part-way (img2img) starts the integrator afresh: the planned orders,
        # capped by the integrator's own warm-up for a run of that many steps.
        rest = self._orders[first:]
        self._orders[first:] = [min(o, w) for o, w in zip(rest, self.integrator.step_orders(len(rest)))]

    # -- the step ---------------------------------------------------------------------------------

    def _data(self, output: Tensor, x: Tensor, point: TimePoint) -> Tensor:
        """The data prediction, thresholded when the configuration asks for it."""
        x0 = self.parameterization.to_data(output, x, point.alpha, point.sigma)
        if self.config.thresholding:
            x0 = dynamic_thresholding(x0, self.config.dynamic_thresholding_ratio, 1.0,
                                      max_scale=self.config.sample_max_value)
        return x0

    def _prediction(self, output: Tensor, x: Tensor, point: TimePoint, kind: str):
        """The ``kind`` prediction (``"noise"`` or ``"data"``) the integrator asked for."""
        if not self.config.thresholding:
            return self.parameterization.convert(kind, output, x, point.alpha, point.sigma)
        # Thresholding corrects the data prediction; the noise prediction follows from it, as in diffusers.
        x0 = self._data(output, x, point)
        return self._data_parameterization.convert(kind, x0, x, point.alpha, point.sigma)

    def step(self, model_output: Tensor, timestep: int | Tensor, sample: Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> SchedulerOutput | tuple[Tensor]:
        """One integrator step from the current timestep to the next, with the model output at the current one.

        Args:
            model_output: The model's output at ``sample`` and ``timestep`` (after guidance).
            timestep: The current timestep (used to find the first step; then steps are counted).
            sample: The current state $x$.
            generator: Unused: the probability-flow ODE is deterministic.
            return_dict: Return a :class:`~diffusers.schedulers.scheduling_utils.SchedulerOutput`
                rather than a tuple.

        Returns:
            The state at the next timestep as ``prev_sample`` (or ``(prev_sample,)``).
        """
        if self._points is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(model_output, Tensor) or not isinstance(sample, Tensor):
            raise TypeError("model_output and sample must be tensors")
        if self.config.variance_type in LEARNED_VARIANCES:
            channels = sample.shape[1] if sample.ndim > 1 else 0
            if model_output.ndim < 2 or model_output.shape[1] != 2 * channels:
                raise ValueError(f"variance_type={self.config.variance_type!r} needs a model output with twice the "
                                 f"channels of the sample, {tuple(sample.shape)}; got {tuple(model_output.shape)}")
            model_output = model_output[:, :channels]
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
                             "for models that also predict a variance set variance_type='learned_range'")
        if self._step_index is None:
            self._init_step_index(timestep)
        i, n = self._step_index, self.num_inference_steps
        if i >= n:
            raise ValueError(f"all {n} steps of this run were taken; call set_timesteps before the next run")
        # Half-precision states are integrated in float32, as diffusers does.
        work = torch.float32 if sample.dtype in (torch.float16, torch.bfloat16) else sample.dtype
        x, out = sample.to(work), model_output.to(work)
        s = self._points[i]
        if i == n - 1 and self.config.final_sigmas_type == "zero":
            prev = self._data(out, x, s)
        else:
            predictor = _GivenOutput(self, out, x, s)
            result = self.integrator.step(predictor, x, s, self._points[i + 1], self._state, self._orders[i])
            self._state = result.state
            prev = result.x
        self._step_index = i + 1
        prev = prev.to(model_output.dtype)
        if not return_dict:
            return (prev,)
        return SchedulerOutput(prev_sample=prev)

    def scale_model_input(self, sample: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """The model input is the state itself (variance-preserving schedules need no scaling).

        Args:
            sample: The state.
            *args: Ignored (the timestep).
            **kwargs: Ignored.
        """
        return sample

    def add_noise(self, original_samples: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        r"""$\sqrt{\bar\alpha_k}\,x_0 + \sqrt{1-\bar\alpha_k}\,\epsilon$ at the timesteps $k$ (one per sample).

        Args:
            original_samples: The clean samples $x_0$.
            noise: The noise $\epsilon$.
            timesteps: The discrete timesteps, one per sample (or one for all).
        """
        steps = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).reshape(-1)
        times = ((steps + 1.0) / self.config.num_train_timesteps).expand(original_samples.shape[0])
        return self.schedule.add_noise(original_samples, times, noise)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
