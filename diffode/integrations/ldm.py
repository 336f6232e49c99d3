r"""``DPMSolverSampler``: the latent-diffusion sampler plugin, built on diffode's integrators.

The latent-diffusion code bases (CompVis and Stability-AI Stable Diffusion, ControlNet and their
forks) ship ``ldm/models/diffusion/dpm_solver/sampler.py``, a ``DPMSolverSampler`` with the
interface of their DDIM sampler, over a bundled copy of the DPM-Solver file. This class has the same
interface, so that switching is an import change:

```python
# from ldm.models.diffusion.dpm_solver import DPMSolverSampler
from diffode.integrations.ldm import DPMSolverSampler

sampler = DPMSolverSampler(model)                       # any LatentDiffusion / ControlLDM
samples, _ = sampler.sample(S=20, batch_size=4, shape=(4, 64, 64), conditioning=c,
                            unconditional_guidance_scale=7.5, unconditional_conditioning=uc)
```

With the defaults it runs the plugin's algorithm (DPM-Solver++ 2M on a uniform time grid from
$t = 1$ to $1/N$, lower orders on the last steps of runs shorter than 15 steps); any diffode
integrator can take its place.

What the model must offer: ``alphas_cumprod`` (the training schedule, $N$ entries),
``apply_model(x, t, c)`` taking the discrete time input $(t - 1/N)\cdot 1000$ (a float tensor of
shape ``(B,)``; $t = 1$ is step 999 for $N = 1000$), and optionally ``parameterization`` (``"eps"``,
``"v"`` or ``"x0"``; default ``"eps"``) and ``betas`` (whose device is the default device).
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from diffode._utils import check_choice, check_finite_number
from diffode.controllers import AdaptiveController
from diffode.integrations import LOWER_ORDER_FINAL_BELOW
from diffode.integrators.base import Integrator
from diffode.integrators.grids import TimeGrid, TimeQuadratic, get_grid
from diffode.integrators.registry import get_integrator
from diffode.models.parameterizations import get_parameterization
from diffode.models.predictor import Predictor
from diffode.models.wrapper import wrap
from diffode.schedules.base import NoiseSchedule, TimePoint
from diffode.schedules.vp import DiscreteVP
from diffode.solve import Solution, solve, solve_adaptive

__all__ = ["DPMSolverSampler"]

DISCRETIZATIONS = ("uniform", "quad")


class _FirstPrediction(Predictor):
    """Passes predictions through and keeps the first one of each step (the one at the step's start).

    The sampler turns it into the step's $\\hat x_0$ for ``img_callback`` and the intermediates,
    without another model call.
    """

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.schedule = predictor.schedule
        self.first: tuple[Tensor, TimePoint, str, Tensor] | None = None

    def _keep(self, x: Tensor, point: TimePoint, kind: str, out: Tensor) -> Tensor:
        if self.first is None:
            self.first = (x, point, kind, out)
        return out

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        return self._keep(x, point, kind, self.predictor.predict(x, point, kind))

    def predict_mixed(self, x: Tensor, point: TimePoint, kind: str, network_dtype: torch.dtype) -> Tensor:
        return self._keep(x, point, kind, self.predictor.predict_mixed(x, point, kind, network_dtype))

    def pop_data(self) -> Tensor | None:
        """The data prediction at the start of the step just taken (``None`` if nothing was recorded)."""
        first, self.first = self.first, None
        if first is None:
            return None
        x, point, kind, out = first
        if kind == "data":
            return out
        return get_parameterization("noise").to_data(out, x, point.alpha, point.sigma)


def _first_tensor(condition: Any) -> Tensor | None:
    """The first tensor in a (possibly nested) dict / list condition."""
    if isinstance(condition, Tensor):
        return condition
    if isinstance(condition, Mapping):
        condition = list(condition.values())
    if isinstance(condition, Sequence) and not isinstance(condition, str):
        for item in condition:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _check_steps(name: str, value: Any, low: int, high: int | None = None) -> int:
    """An integer argument (Python, NumPy or 0-d integer tensor) in ``[low, high]``."""
    try:
        if isinstance(value, bool):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} ({value!r})") from None
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {allowed}, got {value}")
    return value


class DPMSolverSampler:
    """The latent-diffusion ``DPMSolverSampler``, with any diffode integrator.

    Args:
        model: The latent-diffusion model: ``alphas_cumprod``, ``apply_model(x, t, c)`` and
            optionally ``parameterization`` and ``betas`` (see the module docstring).
        device: Where to draw the initial noise and return the samples (default: the device of
            ``model.betas``, else of ``model.alphas_cumprod``).
        integrator: A registered integrator name (``"dpmpp_2m"``, ``"dpmpp_3m"``, ``"ddim"``,
            ``"dpmpp_3s"``, ``"dpmpp_adaptive_23"``, ...; see
            :data:`diffode.integrators.INTEGRATORS`) or an :class:`~diffode.integrators.Integrator`.
        noise_schedule: The diffode schedule to use instead of
            ``DiscreteVP(alphas_cumprod=model.alphas_cumprod, clip_lambda=None)`` (unclipped, as the
            plugin's bundled solver).
        skip_type: The time grid: ``"time_uniform"`` (the plugin's), ``"logSNR"``,
            ``"time_quadratic"``, ``"karras"`` or a :class:`~diffode.integrators.TimeGrid`.
        lower_order_final: Lower the orders of the last steps of multistep runs shorter than 15
            steps (as the plugin).
        denoise_to_zero: After sampling, one more model evaluation that returns the data
            prediction at the end time.
        t_end: The end time of sampling (default $1/N$, the schedule's ``default_t_end``).
        atol: Absolute tolerance of adaptive integrators.
        rtol: Relative tolerance of adaptive integrators.
        progress: Show a progress bar (when a call also has ``verbose=True``).
        **kwargs: Accepted and ignored, as the plugin does.

    What ``S`` means: the number of model evaluations, as in the plugin. A multistep integrator
    takes ``S`` steps (the singlestep warm-up of ``"dpmpp_3m_sw"`` adds one evaluation); a
    singlestep integrator of order $k$ splits them into steps of orders $k$,
    ..., 1 as DPM-Solver-fast does (the step ends are taken from an ``S``-step grid); an adaptive
    integrator chooses its own steps from ``atol`` and ``rtol`` and ignores ``S``.

    Attributes:
        noise_schedule: The diffode schedule of the model.
        integrator: The integrator.
        times: After :meth:`make_schedule`, the grid from $T$ down to the end time (float64).
        last_solution: The :class:`~diffode.solve.Solution` of the last run (its ``nfe`` is exact).
    """

    def __init__(self, model: Any, device: torch.device | str | None = None, *,
                 integrator: str | Integrator = "dpmpp_2m", noise_schedule: NoiseSchedule | None = None,
                 skip_type: str | TimeGrid = "time_uniform", lower_order_final: bool = True,
                 denoise_to_zero: bool = False, t_end: float | None = None, atol: float = 0.0078,
                 rtol: float = 0.05, progress: bool = True, **kwargs: Any):
        if not callable(getattr(model, "apply_model", None)):
            raise TypeError(f"model must have a method apply_model(x, t, c) (a latent-diffusion model), "
                            f"got {type(model).__name__}")
        if noise_schedule is None:
            if getattr(model, "alphas_cumprod", None) is None:
                raise TypeError(f"model must have alphas_cumprod (its training schedule), got {type(model).__name__}; "
                                "or pass noise_schedule=")
            noise_schedule = DiscreteVP(alphas_cumprod=model.alphas_cumprod, clip_lambda=None)
        elif not isinstance(noise_schedule, NoiseSchedule):
            raise TypeError(f"noise_schedule must be a diffode NoiseSchedule, got {type(noise_schedule).__name__}")
        model_parameterization = getattr(model, "parameterization", "eps")
        try:
            self.parameterization = get_parameterization(model_parameterization)
        except (TypeError, ValueError):
            raise ValueError(f"model.parameterization must be 'eps', 'v' or 'x0', got {model_parameterization!r}") from None
        self.model = model
        self.device = None if device is None else torch.device(device)
        self.alphas_cumprod = getattr(model, "alphas_cumprod", None)
        self.noise_schedule = noise_schedule
        self.integrator = get_integrator(integrator)
        self.grid = get_grid(skip_type)
        if not isinstance(lower_order_final, bool) or not isinstance(denoise_to_zero, bool):
            raise TypeError("lower_order_final and denoise_to_zero must be bools")
        self.lower_order_final = lower_order_final
        self.denoise_to_zero = denoise_to_zero
        t_end = noise_schedule.default_t_end if t_end is None else t_end
        self.t_end = float(noise_schedule.check_time("t_end", check_finite_number("t_end", t_end)))
        if not 0.0 < self.t_end < noise_schedule.T:
            raise ValueError(f"t_end must lie in (0, T={noise_schedule.T}), got {self.t_end}")
        self.controller = AdaptiveController(atol=atol, rtol=rtol)
        self.progress = bool(progress)
        self.times: Tensor | None = None
        self.orders: list[int] | None = None
        self.last_solution: Solution | None = None

    def __repr__(self) -> str:
        return f"DPMSolverSampler({self.integrator!r}, {self.noise_schedule!r}, grid={self.grid!r})"

    # -- schedule ---------------------------------------------------------------------------------

    @property
    def adaptive(self) -> bool:
        """Whether the integrator chooses its own steps (an embedded pair)."""
        return self.integrator.error_order is not None

    @property
    def num_steps(self) -> int:
        """The number of steps of the grid of the last :meth:`make_schedule` (0 before)."""
        return 0 if self.times is None else self.times.numel() - 1

    def make_schedule(self, ddim_num_steps: int, ddim_discretize: str = "uniform", ddim_eta: float = 0.0,
                      verbose: bool = True) -> None:
        """Lay out the grid for ``ddim_num_steps`` model evaluations (the DDIM sampler's method).

        :meth:`sample` calls it; call it yourself before :meth:`stochastic_encode`, :meth:`encode`
        and :meth:`decode`, whose step indices count the steps of this grid.

        Args:
            ddim_num_steps: The number of model evaluations ``S``.
            ddim_discretize: ``"uniform"`` (the sampler's ``skip_type``) or ``"quad"``
                (``"time_quadratic"``).
            ddim_eta: Must be 0: the sampler integrates the deterministic probability-flow ODE.
            verbose: Unused (kept for the DDIM sampler's signature).
        """
        steps = _check_steps("S", ddim_num_steps, 1)
        check_choice("ddim_discretize", ddim_discretize, DISCRETIZATIONS)
        self._check_zero("ddim_eta", ddim_eta, 0.0)
        grid = self.grid if ddim_discretize == "uniform" else TimeQuadratic()
        if self.adaptive:  # the grid only indexes encode/decode; the integrator picks its own steps
            self.times = grid.times(self.noise_schedule, self.noise_schedule.T, self.t_end, steps)
            self.orders = None
            return
        below = LOWER_ORDER_FINAL_BELOW if self.lower_order_final else False
        plan = self.integrator.plan(self.noise_schedule, steps, grid=grid, t_end=self.t_end, lower_order_final=below)
        self.times = torch.tensor(plan.times, dtype=torch.float64)
        self.orders = list(plan.orders)

    def _orders(self, start: int, stop: int, reverse: bool = False) -> list[int] | None:
        """Orders of the grid steps ``start:stop`` (counted from the noisy end), or of the inversion.

        A run over part of the grid starts the integrator afresh: the planned orders, capped by the
        integrator's own warm-up for a run of that many steps.
        """
        if self.adaptive:
            return None
        orders = self.orders[start:stop]
        orders = orders[::-1] if reverse else orders
        return [min(o, w) for o, w in zip(orders, self.integrator.step_orders(len(orders)))]

    def _require_schedule(self, method: str) -> int:
        if self.times is None:
            raise ValueError(f"{method} needs a grid: call make_schedule(ddim_num_steps=S) first")
        return self.num_steps

    # -- the model --------------------------------------------------------------------------------

    def _default_device(self) -> torch.device:
        if self.device is not None:
            return self.device
        for name in ("betas", "alphas_cumprod"):
            value = getattr(self.model, name, None)
            if isinstance(value, Tensor):
                return value.device
        return torch.device("cpu")

    def predictor(self, conditioning: Any = None, unconditional_conditioning: Any = None,
                  unconditional_guidance_scale: float = 1.0) -> Predictor:
        """The model as a diffode :class:`~diffode.models.Predictor`, with classifier-free guidance.

        The model is called as ``model.apply_model(x, t_input, c)``. With an unconditional
        condition and a scale other than 1, ``c`` is the batched ``[unconditional, conditional]``
        pair (tensors, or dicts / lists of them, concatenated along the batch) and the output is
        $o_u + s\\,(o_c - o_u)$; otherwise the conditional model alone is called.

        Args:
            conditioning: The condition (``None`` for an unconditional model).
            unconditional_conditioning: The empty condition for classifier-free guidance.
            unconditional_guidance_scale: The guidance scale $s$.
        """
        scale = check_finite_number("unconditional_guidance_scale", unconditional_guidance_scale)

        def network(x: Tensor, t_input: Tensor, c: Any = None) -> Tensor:
            return self.model.apply_model(x, t_input, c)

        if unconditional_conditioning is None or scale == 1.0:
            return wrap(network, self.noise_schedule, self.parameterization, condition=conditioning)
        if conditioning is None:
            raise ValueError("unconditional_conditioning was given without conditioning")
        return wrap(network, self.noise_schedule, self.parameterization, guidance="classifier-free",
                    condition=conditioning, unconditional_condition=unconditional_conditioning, scale=scale)

    # -- the loop ---------------------------------------------------------------------------------

    def _run(self, x: Tensor, times: Tensor, orders: list[int] | None, predictor: Predictor, *, desc: str,
             verbose: bool, callback: Callable | None = None, img_callback: Callable | None = None,
             log_every: Callable[[int, int], bool] | None = None, mask: Tensor | None = None,
             x0: Tensor | None = None, denoise: bool = False) -> tuple[Tensor, dict[str, list[Tensor]]]:
        n = times.numel() - 1
        recorder = _FirstPrediction(predictor)
        logs: dict[str, list[Tensor]] = {"x_inter": [x], "pred_x0": [x]}
        bar = tqdm(total=None if self.adaptive else n, desc=desc, disable=not (verbose and self.progress))
        end = float(times[-1])

        def blend(x: Tensor, t: float) -> Tensor:
            # Inpainting as the DDIM sampler does it: the known region is the data, noised afresh to t.
            known = self.noise_schedule.add_noise(x0, t)
            return known * mask + (1.0 - mask) * x

        def after_step(x: Tensor, t: float, step: int) -> Tensor:
            i = step - 1
            bar.update(1)
            logged = log_every is not None and log_every(i, n)
            x0_hat = recorder.pop_data() if (img_callback is not None or logged) else None
            recorder.first = None
            if mask is not None and t != end:
                x = blend(x, t)
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(x0_hat, i)
            if logged:
                logs["x_inter"].append(x)
                logs["pred_x0"].append(x0_hat)
            return x

        if mask is not None:
            x = blend(x, float(times[0]))
        try:
            if self.adaptive:
                solution = solve_adaptive(recorder, x, self.integrator, float(times[0]), end, self.controller,
                                          correcting_xt_fn=after_step, denoise_to_zero=denoise)
            else:
                solution = solve(recorder, x, self.integrator, times, orders=orders, correcting_xt_fn=after_step,
                                 denoise_to_zero=denoise)
        finally:
            bar.close()
        x = solution.x
        if log_every is not None and logs["x_inter"][-1] is not x:
            # The final state when the last step was not logged (adaptive runs) or was denoised.
            logs["x_inter"].append(x)
            logs["pred_x0"].append(x)
        self.last_solution = solution
        return x, logs

    @staticmethod
    def _check_zero(name: str, value: Any, default: Any) -> None:
        if (value is not None) if default is None else (value is None or value != default):
            raise ValueError(f"{name}={value!r} is a DDIM sampler option that DPMSolverSampler does not support "
                             f"(it integrates the deterministic probability-flow ODE); leave it at {default!r}")

    # -- the plugin's interface -------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, S: int, batch_size: int, shape: Sequence[int], conditioning: Any = None,
               callback: Callable[[int], Any] | None = None, normals_sequence: Any = None,
               img_callback: Callable[[Tensor, int], Any] | None = None, quantize_x0: bool = False,
               eta: float = 0.0, mask: Tensor | None = None, x0: Tensor | None = None, temperature: float = 1.0,
               noise_dropout: float = 0.0, score_corrector: Any = None, corrector_kwargs: dict | None = None,
               verbose: bool = True, x_T: Tensor | None = None, log_every_t: int = 100,
               unconditional_guidance_scale: float = 1.0, unconditional_conditioning: Any = None,
               **kwargs: Any) -> tuple[Tensor, dict[str, list[Tensor]]]:
        """Draw samples (the plugin's and the DDIM sampler's signature).

        Args:
            S: The number of model evaluations (see the class docstring).
            batch_size: The batch size.
            shape: The shape of one sample, ``(C, H, W)`` (any length is accepted).
            conditioning: The condition: a tensor, a list of tensors or a dict of tensors or of
                lists of tensors (ControlNet's ``{"c_concat": [...], "c_crossattn": [...]}``).
            callback: Called as ``callback(i)`` after step ``i``.
            normals_sequence: Unsupported (must be ``None``).
            img_callback: Called as ``img_callback(pred_x0, i)`` after step ``i``, with the data
                prediction at the step's start.
            quantize_x0: Unsupported (must be ``False``).
            eta: Must be 0 (the probability-flow ODE is deterministic).
            mask: Inpainting mask, 1 where ``x0`` is known: before every step but the last the
                known region is replaced by ``x0`` noised to the current time (as the DDIM sampler).
            x0: The known latents for ``mask``.
            temperature: Must be 1.
            noise_dropout: Must be 0.
            score_corrector: Unsupported (must be ``None``).
            corrector_kwargs: Unused.
            verbose: Show the progress bar.
            x_T: The initial noise (default: standard normal on the sampler's device).
            log_every_t: Keep the state and the data prediction every this many steps (and at the
                first and last step) in the intermediates.
            unconditional_guidance_scale: The classifier-free guidance scale.
            unconditional_conditioning: The empty condition, with the structure of ``conditioning``.
            **kwargs: ``dynamic_threshold`` and ``ucg_schedule`` (Stability's DDIM options) must be
                ``None``; anything else is ignored, as the plugin does.

        Returns:
            ``(samples, intermediates)``, the intermediates a dict with the lists ``"x_inter"``
            and ``"pred_x0"`` (as the DDIM sampler's).
        """
        for name, value, default in (("normals_sequence", normals_sequence, None), ("quantize_x0", quantize_x0, False),
                                     ("eta", eta, 0.0), ("temperature", temperature, 1.0),
                                     ("noise_dropout", noise_dropout, 0.0), ("score_corrector", score_corrector, None),
                                     ("dynamic_threshold", kwargs.get("dynamic_threshold"), None),
                                     ("ucg_schedule", kwargs.get("ucg_schedule"), None)):
            self._check_zero(name, value, default)
        batch_size = _check_steps("batch_size", batch_size, 1)
        if isinstance(shape, (int, str)) or not isinstance(shape, Sequence):
            raise TypeError(f"shape must be a sequence of ints such as (C, H, W), got {shape!r}")
        shape = tuple(_check_steps("shape[i]", d, 1) for d in shape)
        log_every_t = _check_steps("log_every_t", log_every_t, 1)
        first = _first_tensor(conditioning)
        if first is not None and first.shape[0] != batch_size:
            warnings.warn(f"got {first.shape[0]} conditionings but batch_size is {batch_size}", stacklevel=2)
        size = (batch_size, *shape)
        device = self._default_device()
        if x_T is None:
            x = torch.randn(size, device=device)
        else:
            if not isinstance(x_T, Tensor) or tuple(x_T.shape) != size:
                got = tuple(x_T.shape) if isinstance(x_T, Tensor) else type(x_T).__name__
                raise ValueError(f"x_T must be a tensor of shape (batch_size, *shape) = {size}, got {got}")
            x = x_T
        if mask is not None and x0 is None:
            raise ValueError("mask needs x0, the known latents")
        self.make_schedule(S)
        predictor = self.predictor(conditioning, unconditional_conditioning, unconditional_guidance_scale)

        def log_every(i: int, n: int) -> bool:
            index = n - i - 1
            return index % log_every_t == 0 or index == n - 1

        x, logs = self._run(x, self.times, self._orders(0, self.num_steps), predictor, desc="DPM-Solver",
                            verbose=verbose, callback=callback, img_callback=img_callback, log_every=log_every,
                            mask=mask, x0=x0, denoise=self.denoise_to_zero)
        return x.to(device), logs

    @torch.no_grad()
    def stochastic_encode(self, x0: Tensor, t: Tensor | int | Sequence[int], use_original_steps: bool = False,
                          noise: Tensor | None = None) -> Tensor:
        """Noise ``x0`` to grid point ``t``: $\\alpha x_0 + \\sigma\\epsilon$ (img2img's first half).

        ``t`` counts steps of the :meth:`make_schedule` grid from the data end: 0 is the end time
        ($\\approx$ data), ``num_steps`` is $T$. :meth:`decode` with ``t_start = t`` then samples
        from exactly that point (the DDIM sampler's ``decode`` starts one grid point lower than its
        ``stochastic_encode`` noised to; this sampler does not).

        Args:
            x0: The clean latents, ``(B, ...)``.
            t: The step index, one per sample or one for all.
            use_original_steps: Must be ``False``.
            noise: The noise $\\epsilon$ (default: standard normal).
        """
        n = self._require_schedule("stochastic_encode")
        self._check_zero("use_original_steps", use_original_steps, False)
        index = torch.as_tensor(t).detach().to("cpu").reshape(-1)
        if index.is_floating_point() or index.is_complex() or index.dtype == torch.bool:
            raise TypeError(f"t must hold integer step indices, got dtype {index.dtype}")
        if index.numel() not in (1, x0.shape[0]):
            raise ValueError(f"t must hold one index or one per sample ({x0.shape[0]}), got {index.numel()}")
        if bool(((index < 0) | (index > n)).any()):
            raise ValueError(f"t must lie in [0, {n}] (the steps of the grid), got {index.tolist()}")
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise must have the shape of x0, {tuple(x0.shape)}, got {tuple(noise.shape)}")
        times = self.times.flip(0)[index.long()].expand(x0.shape[0])
        return self.noise_schedule.add_noise(x0, times, noise)

    @torch.no_grad()
    def encode(self, x0: Tensor, c: Any, t_enc: int, use_original_steps: bool = False,
               return_intermediates: int | None = None, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None,
               callback: Callable[[int], Any] | None = None) -> tuple[Tensor, dict[str, Any]]:
        """Invert: integrate the ODE from the data end up ``t_enc`` steps of the grid (deterministic).

        With the same integrator, :meth:`decode` with ``t_start = t_enc`` maps the result back to
        ``x0`` up to the integrators' error.

        Args:
            x0: The clean latents.
            c: The condition.
            t_enc: How many grid steps to go up (``num_steps`` reaches $T$).
            use_original_steps: Must be ``False``.
            return_intermediates: Keep about this many intermediate states in the output.
            unconditional_guidance_scale: The classifier-free guidance scale.
            unconditional_conditioning: The empty condition.
            callback: Called as ``callback(i)`` after step ``i``.

        Returns:
            ``(x_encoded, out)`` with ``out = {"x_encoded", "intermediate_steps"}`` and, when asked
            for, ``"intermediates"``.
        """
        n = self._require_schedule("encode")
        self._check_zero("use_original_steps", use_original_steps, False)
        t_enc = _check_steps("t_enc", t_enc, 0, n)
        out: dict[str, Any] = {"x_encoded": x0, "intermediate_steps": []}
        if return_intermediates:
            out["intermediates"] = []
        if t_enc == 0:
            return x0, out
        every = max(1, t_enc // int(return_intermediates)) if return_intermediates else 0

        def log_every(i: int, total: int) -> bool:
            keep = bool(every) and (i % every == 0 or i == total - 1)
            if keep:
                out["intermediate_steps"].append(i)
            return keep

        times = self.times.flip(0)[: t_enc + 1]
        predictor = self.predictor(c, unconditional_conditioning, unconditional_guidance_scale)
        x, logs = self._run(x0, times, self._orders(n - t_enc, n, reverse=True), predictor, desc="Encoding image",
                            verbose=True, callback=callback, log_every=log_every if every else None)
        out["x_encoded"] = x
        if return_intermediates:
            out["intermediates"] = logs["x_inter"][1:]
        return x, out

    @torch.no_grad()
    def decode(self, x_latent: Tensor, cond: Any, t_start: int, unconditional_guidance_scale: float = 1.0,
               unconditional_conditioning: Any = None, use_original_steps: bool = False,
               callback: Callable[[int], Any] | None = None) -> Tensor:
        """Sample from grid point ``t_start`` down to the end time (img2img's second half).

        Args:
            x_latent: The state at grid point ``t_start`` (from :meth:`stochastic_encode` or :meth:`encode`).
            cond: The condition.
            t_start: The grid point to start from (see :meth:`stochastic_encode`).
            unconditional_guidance_scale: The classifier-free guidance scale.
            unconditional_conditioning: The empty condition.
            use_original_steps: Must be ``False``.
            callback: Called as ``callback(i)`` after step ``i``.
        """
        n = self._require_schedule("decode")
        self._check_zero("use_original_steps", use_original_steps, False)
        t_start = _check_steps("t_start", t_start, 0, n)
        if t_start == 0:
            return x_latent
        times = self.times[n - t_start:]
        predictor = self.predictor(cond, unconditional_conditioning, unconditional_guidance_scale)
        x, _ = self._run(x_latent, times, self._orders(n - t_start, n), predictor, desc="Decoding image",
                         verbose=True, callback=callback, denoise=self.denoise_to_zero)
        return x
