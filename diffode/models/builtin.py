r"""Built-in models: what ``diffode demo`` and ``diffode sample`` run without a user's network.

* ``"mixture"`` (the default): an analytic Gaussian mixture in image shape ``(3, 8, 8)``, whose
  exact noise prediction makes every error figure exact (the RK45 ground truth of the same ODE).
  It works under any schedule; by default the discrete DDPM betas of :func:`ddpm_betas`.
* ``"digits"``: a small noise-prediction network trained by the project on scikit-learn's 8x8
  handwritten digits (``examples/train_digits.py``), shape ``(1, 8, 8)``, under its own discrete
  schedule. Here solver accuracy meets a real network.

```python
from diffode.models.builtin import load_model

spec, model = load_model("mixture")            # a Predictor under DiscreteVP(ddpm_betas())
x_T = spec.prior(model.schedule, batch=16, seed=0)
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from diffode._utils import check_choice
from diffode.models.analytic import GaussianMixture
from diffode.models.predictor import Predictor
from diffode.schedules import (
    EDM,
    VE,
    CosineVP,
    DiscreteVP,
    FlowMatching,
    LinearVP,
    NoiseSchedule,
    SubVP,
)

__all__ = ["BUILTIN_MODELS", "SCHEDULES", "BuiltinModel", "ddpm_betas", "get_schedule", "image_mixture",
           "load_model"]


def ddpm_betas(n: int = 1000) -> Tensor:
    """The linear DDPM betas, ``linspace(1e-4, 0.02, n)`` in float64 (Ho et al. 2020)."""
    return torch.linspace(1e-4, 0.02, n, dtype=torch.float64)


#: Named schedules with a one-line description: the choices of the command line's ``--schedule``.
SCHEDULES: dict[str, tuple[Callable[[], NoiseSchedule], str]] = {
    "discrete": (lambda: DiscreteVP(betas=ddpm_betas()),
                 "DiscreteVP: discrete DDPM betas linspace(1e-4, 0.02, 1000), t = (n + 1)/1000"),
    "linear": (LinearVP, "LinearVP: the score-SDE VP schedule, beta(t) = 0.1 + 19.9 t on (0, 1]"),
    "cosine": (CosineVP, "CosineVP: the improved-DDPM cosine schedule, truncated at T = 0.9946"),
    "subvp": (SubVP, "SubVP: score_sde's sub-VP SDE, alpha as LinearVP, sigma = 1 - alpha^2"),
    "ve": (VE, "VE: score_sde's VE SDE, sigma = 0.01 (50/0.01)^t, alpha = 1"),
    "edm": (EDM, "EDM: Karras et al.'s path, alpha = 1, sigma = t in [0.002, 80]"),
    "flow": (FlowMatching, "FlowMatching: rectified flow, alpha = 1 - t, sigma = t (shift 1), t in (0, 0.999]"),
}


def get_schedule(name: str) -> NoiseSchedule:
    """A fresh schedule from its name in :data:`SCHEDULES`."""
    check_choice("schedule", name, SCHEDULES)
    return SCHEDULES[name][0]()


def image_mixture(channels: int = 3, size: int = 8, components: int = 8, seed: int = 0) -> GaussianMixture:
    """A Gaussian mixture whose means look like small smooth images.

    Each mean is ``tanh`` of a few random low-frequency cosine waves, so it lies in (-1, 1) like
    normalised pixels; the standard deviations range from 0.05 (sharp, nearly a point mass, where
    the probability-flow ODE bends late) to 0.4. Deterministic for a given ``seed``.

    Args:
        channels: Channels of each sample.
        size: Height and width.
        components: Number of mixture components.
        seed: Seed of the generator that draws the means and weights.
    """
    g = torch.Generator().manual_seed(seed)
    grid = torch.linspace(0.0, 1.0, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    means = torch.zeros(components, channels, size, size, dtype=torch.float64)
    for k in range(components):
        for c in range(channels):
            field_ = torch.zeros(size, size, dtype=torch.float64)
            for _ in range(3):
                fx, fy = torch.randint(0, 3, (2,), generator=g).tolist()
                phase = float(torch.rand((), generator=g, dtype=torch.float64)) * 2 * math.pi
                amp = float(torch.randn((), generator=g, dtype=torch.float64))
                field_ += amp * torch.cos(math.pi * (fx * xx + fy * yy) + phase)
            means[k, c] = torch.tanh(field_)
    stds = torch.logspace(math.log10(0.05), math.log10(0.4), components, dtype=torch.float64)
    weights = 0.5 + torch.rand(components, generator=g, dtype=torch.float64)
    return GaussianMixture(weights, means, stds)


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in model: how to build it, its sample shape and its schedule.

    Attributes:
        name: The registry name.
        description: One line for ``diffode list``.
        sample_shape: The shape of one sample (without the batch).
        build: ``build(schedule, device, dtype) -> Predictor``.
        default_schedule: The name in :data:`SCHEDULES`, or ``None`` when the model has its own
            schedule (see ``own_schedule``).
        analytic: Whether the model is exact (errors against RK45 are then exact figures).
        own_schedule: For a trained network, the schedule it was trained with (no other is allowed).
        to_images: Maps samples to images in [0, 1] (for the PNG grids), or ``None``.
    """

    name: str
    description: str
    sample_shape: tuple[int, ...]
    build: Callable[[NoiseSchedule, torch.device | str | None, torch.dtype], Predictor]
    default_schedule: str | None = "discrete"
    analytic: bool = True
    own_schedule: Callable[[], NoiseSchedule] | None = None
    to_images: Callable[[Tensor], Tensor] | None = field(default=None)

    def schedule(self, name: str | None = None) -> NoiseSchedule:
        """The schedule to run under: ``name`` from :data:`SCHEDULES` or the model's default."""
        if self.own_schedule is not None:
            if name is not None:
                raise ValueError(f"the {self.name!r} model was trained with its own schedule; "
                                 f"drop --schedule (got {name!r})")
            return self.own_schedule()
        return get_schedule(name or self.default_schedule)

    def prior(self, schedule: NoiseSchedule, batch: int, seed: int = 0, dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> Tensor:
        """Reproducible noise $x_T$ of shape ``(batch, *sample_shape)`` (drawn in float64 on the CPU, then cast)."""
        g = torch.Generator().manual_seed(seed)
        return schedule.prior_sample((batch, *self.sample_shape), generator=g, dtype=torch.float64).to(device, dtype)


def _mixture_images(x: Tensor) -> Tensor:
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _build_mixture(schedule: NoiseSchedule, device, dtype) -> Predictor:
    return image_mixture().predictor(schedule)


def _digits_schedule() -> NoiseSchedule:
    from diffode.models.digits import digits_betas

    return DiscreteVP(betas=digits_betas())


def _build_digits(schedule: NoiseSchedule, device, dtype) -> Predictor:
    from diffode.models.digits import load_digits_model
    from diffode.models.wrapper import wrap

    # A float64 state runs the network in float32: three times faster, and its float32 rounding
    # (~1e-7) is far below any solver error it is compared with (the RK45 ground truth, exact errors).
    net_dtype = torch.float32 if dtype == torch.float64 else dtype
    try:
        net = load_digits_model(device=device, dtype=net_dtype)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"the digits weights are missing ({error.filename}); reinstall diffode or train "
                                "them with examples/train_digits.py") from None
    return wrap(net, schedule, "noise", time_input="discrete", network_dtype=net_dtype)


def _digits_images(x: Tensor) -> Tensor:
    from diffode.models.digits import to_images

    return to_images(x)


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "mixture": BuiltinModel(
        "mixture", "analytic 8-component Gaussian mixture in image shape (3, 8, 8): exact errors (the default)",
        (3, 8, 8), _build_mixture, to_images=_mixture_images),
    "digits": BuiltinModel(
        "digits", "small U-Net noise predictor trained on scikit-learn's 8x8 digits, shape (1, 8, 8), its own "
        "discrete DDPM schedule", (1, 8, 8), _build_digits, default_schedule=None, analytic=False,
        own_schedule=_digits_schedule, to_images=_digits_images),
}
BUILTIN_MODELS["default"] = BUILTIN_MODELS["mixture"]


def load_model(name: str = "mixture", schedule: str | None = None, *, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float64) -> tuple[BuiltinModel, Predictor]:
    """A built-in model as a :class:`~diffode.models.Predictor`.

    Args:
        name: ``"mixture"`` (alias ``"default"``) or ``"digits"``.
        schedule: A name from :data:`SCHEDULES`, or ``None`` for the model's own or default one.
        device: Where a network's weights go (analytic models follow the device of ``x``).
        dtype: The dtype of a network's weights (analytic models follow the dtype of ``x``).

    Returns:
        ``(spec, predictor)``.
    """
    check_choice("model", name, BUILTIN_MODELS)
    spec = BUILTIN_MODELS[name]
    return spec, spec.build(spec.schedule(schedule), device, dtype)
