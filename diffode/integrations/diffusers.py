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

**The final step.** With ``final_sigmas_type="zero"`` (diffusers' default) the last step goes to
$\sigma = 0$, $\alpha = 1$, i.e. $\lambda = +\infty$. The first-order step to that point is exact in
the limit: $x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t(1 - e^{-h})\hat x_0 \to \hat x_0$ as
$h \to \infty$ (the noise form gives the same), so the last step returns the data prediction at the
last timestep: diffode's ``denoise_to_zero``. With ``"sigma_min"`` the last step is an ordinary step
to step 0, $t = 1/N$.

**Which integrators.** A scheduler sees one model output per step, at the step's start. That fits
the multistep integrators with the lower-order warm-up (``"ddim"``, ``"dpmpp_2m"``, ``"dpmpp_3m"``,
``"dpm_2m"``, ``"dpm_3m"`` and any registered :class:`~diffode.integrators.DPMSolverMultistep`
configuration). Singlestep and adaptive integrators, and the singlestep warm-up (``"*_3m_sw"``),
evaluate the model at points inside a step, which the pipeline never provides: the scheduler refuses
them with an error (use diffode's own sampler for those).

**Agreement with diffusers.** The orders follow ``DPMSolverMultistepScheduler``'s rule (warm-up;
with ``lower_order_final`` and fewer than 15 steps, first order on the last step and at most second
order on the one before; the step to $\sigma = 0$ is always first order). With
``integrator="dpmpp_2m"`` (or ``"ddim"``, ``"dpm_2m"``) this is diffusers' DPM-Solver++ 2M (and 1,
DPM-Solver 2M) to float32 round-off; diffode's order-3 multistep methods use the exact third-order
weights and so differ from diffusers' ``solver_order=3``, whose last term has half that weight.

Not supported: Karras / exponential / beta / Lu sigma grids (``use_*_sigmas``), dynamic
thresholding, learned-variance outputs, and the SDE variants.
"""

from __future__ import annotations

import math
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

from diffode._utils import check_choice
from diffode.integrations import multistep_orders
from diffode.integrators.base import Integrator, State
from diffode.integrators.registry import INTEGRATORS, get_integrator
from diffode.models.parameterizations import Parameterization, get_parameterization
from diffode.models.predictor import Predictor
from diffode.schedules.base import NoiseSchedule, TimePoint
from diffode.schedules.vp import DiscreteVP

__all__ = ["DiffodeScheduler", "supported_integrators", "training_betas"]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "noise", "v_prediction": "v", "sample": "data"}
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
# diffusers' names of the two second-order variants, and diffode's.
SOLVER_TYPES = {"midpoint": "dpmsolver", "heun": "taylor", "dpmsolver": "dpmsolver", "taylor": "taylor"}
# Values other diffusers schedulers keep under the same key (DEIS, UniPC); they arrive through
# from_config and mean "the integrator's own", as DPMSolverMultistepScheduler also reads them.
FOREIGN_SOLVER_TYPES = ("logrho", "bh1", "bh2")


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
    # What the integrator declares: a run of n steps costs n model evaluations.
    return not integrator.adaptive and all(integrator.evaluations(integrator.step_orders(n)) == n for n in (1, 2, 3, 4))


def supported_integrators() -> list[str]:
    """The registered integrators that need one model evaluation per step (usable in a scheduler)."""
    return [name for name in sorted(INTEGRATORS) if _one_evaluation_per_step(get_integrator(name))]


class _GivenOutput(Predictor):
    """The model output the pipeline computed for this step, as the Predictor the integrator calls.

    It answers only at the step's own state and point: an integrator that asks anywhere else would
    need a model evaluation the pipeline cannot give.
    """

    def __init__(self, schedule: NoiseSchedule, parameterization: Parameterization, output: Tensor,
                 sample: Tensor, point: TimePoint):
        self.schedule = schedule
        self.parameterization = parameterization
        self.output = output
        self.sample = sample
        self.point = point

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        if x is not self.sample or point != self.point:
            raise RuntimeError("the integrator asked for a model output away from the step's start, which a "
                               "diffusers pipeline (one model call per step) cannot provide")
        return self.parameterization.convert(kind, self.output, x, point.alpha, point.sigma)


class DiffodeScheduler(SchedulerMixin, ConfigMixin):
    r"""A diffusers scheduler that runs a diffode multistep integrator (see the module docstring).

    Args:
        num_train_timesteps: $N$, the number of training steps.
        beta_start: The first training beta (linear schedules).
        beta_end: The last training beta (linear schedules).
        beta_schedule: ``"linear"``, ``"scaled_linear"`` or ``"squaredcos_cap_v2"``.
        trained_betas: Explicit training betas (override ``beta_schedule``).
        prediction_type: What the model predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        integrator: A registered diffode integrator that needs one model evaluation per step:
            ``"dpmpp_2m"`` (default), ``"dpmpp_3m"``, ``"ddim"``, ``"dpm_2m"``, ``"dpm_3m"``
            (:func:`supported_integrators` lists them all).
        solver_type: The second-order variant: ``"dpmsolver"`` (diffusers' ``"midpoint"``) or
            ``"taylor"`` (``"heun"``); ``None`` keeps the integrator's own. DEIS's and UniPC's values
            (``"logrho"``, ``"bh1"``, ``"bh2"``), which come with their configurations, mean ``None``.
        lower_order_final: First order on the last step and at most second order on the one before,
            for fewer than 15 steps.
        final_sigmas_type: ``"zero"`` (the last step returns the data prediction) or
            ``"sigma_min"`` (the last step ends at training step 0).
        timestep_spacing: ``"linspace"``, ``"leading"`` or ``"trailing"``, as diffusers' DPM-Solver.
        steps_offset: Added to the timesteps of ``"leading"`` spacing.
        lambda_min_clipped: Training steps whose half log-SNR is below this are not used (as
            diffusers; -5.1 suits cosine schedules).
        rescale_betas_zero_snr: Rescale the betas to zero terminal SNR; the last
            $\bar\alpha$ is then set to $2^{-24}$ so that $\lambda$ stays finite (as diffusers).

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
                 prediction_type: str = "epsilon", integrator: str = "dpmpp_2m", solver_type: str | None = None,
                 lower_order_final: bool = True, final_sigmas_type: str = "zero",
                 timestep_spacing: str = "linspace", steps_offset: int = 0,
                 lambda_min_clipped: float = -math.inf, rescale_betas_zero_snr: bool = False):
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        check_choice("final_sigmas_type", final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("timestep_spacing", timestep_spacing, TIMESTEP_SPACINGS)
        if not isinstance(integrator, str):
            raise TypeError(f"integrator must be the name of a registered diffode integrator (the config is saved as "
                            f"JSON), got {type(integrator).__name__}; register a custom one with "
                            "diffode.integrators.register")
        self.integrator = get_integrator(integrator)
        if not _one_evaluation_per_step(self.integrator):
            raise ValueError(f"integrator {integrator!r} evaluates the model inside its steps, but a diffusers pipeline "
                             f"makes one model call per step; use one of {', '.join(supported_integrators())} "
                             "(or diffode's own sampler for singlestep and adaptive integrators)")
        if solver_type is not None and solver_type not in FOREIGN_SOLVER_TYPES:
            check_choice("solver_type", solver_type, SOLVER_TYPES)
            self.integrator.solver_type = SOLVER_TYPES[solver_type]
        self.betas = training_betas(beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas,
                                    rescale_betas_zero_snr)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, 0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 2.0**-24
        self.schedule = DiscreteVP(alphas_cumprod=self.alphas_cumprod.double(), clip_lambda=None)
        self.parameterization = get_parameterization(PREDICTION_TYPES[prediction_type])
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._points: list[TimePoint] | None = None
        self._orders: list[int] = []
        self._state: State = self.integrator.init()
        self._step_index: int | None = None
        self._begin_index: int | None = None

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

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:
        """Lay out the steps of a run and reset the integrator state (call before every run).

        Args:
            num_inference_steps: The number of steps (= model evaluations).
            device: Where to put :attr:`timesteps`.
            timesteps: Custom timesteps, strictly decreasing integers in ``[0, N-1]`` (instead of
                ``num_inference_steps``).
        """
        big_n = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError("pass exactly one of num_inference_steps and timesteps")
        if timesteps is not None:
            steps = np.asarray(timesteps.cpu() if isinstance(timesteps, Tensor) else timesteps)
            if steps.ndim != 1 or steps.size < 1 or not np.issubdtype(steps.dtype, np.integer):
                raise ValueError(f"timesteps must be a non-empty 1-D sequence of integers, got {timesteps!r}")
            what = "timesteps"
        else:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
            steps = self._spaced_timesteps(num_inference_steps)
            what = f"timestep_spacing={self.config.timestep_spacing!r} with {num_inference_steps} steps"
        steps = steps.astype(np.int64)
        if steps.min() < 0 or steps.max() > big_n - 1:
            raise ValueError(f"{what} gives timesteps outside [0, {big_n - 1}]: {steps.tolist()}")
        if (np.diff(steps) >= 0).any():
            raise ValueError(f"{what} gives timesteps that are not strictly decreasing: {steps.tolist()}")
        n = len(steps)
        times = (steps.astype(np.float64) + 1.0) / big_n
        if self.config.final_sigmas_type == "sigma_min":
            times = np.append(times, 1.0 / big_n)
        self._points = self.schedule.points(torch.from_numpy(times))
        self._orders = multistep_orders(self.integrator, n, self.config.lower_order_final)
        self.timesteps = torch.from_numpy(steps).to(device)
        self.num_inference_steps = n
        self._state = self.integrator.init()
        self._step_index = None
        self._begin_index = None

    @property
    def times(self) -> list[float]:
        """diffode's continuous times of the run: $(k+1)/N$ per timestep, then $1/N$ with ``"sigma_min"``."""
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
            return
        matches = (self.timesteps == torch.as_tensor(timestep).to(self.timesteps.device)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep!r} is not one of this run's timesteps {self.timesteps.tolist()}")
        self._step_index = int(matches[0])

    # -- the step ---------------------------------------------------------------------------------

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
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)} but sample has {tuple(sample.shape)}; "
                             "models that also predict a variance are not supported")
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
            prev = self.parameterization.to_data(out, x, s.alpha, s.sigma)
        else:
            predictor = _GivenOutput(self.schedule, self.parameterization, out, x, s)
            order = min(self._orders[i], len(self._state.history) + 1)
            result = self.integrator.step(predictor, x, s, self._points[i + 1], self._state, order)
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
