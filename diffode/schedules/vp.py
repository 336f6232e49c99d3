"""Variance-preserving schedules: discrete DDPM betas, the linear VP SDE and the cosine schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time, check_finite_number
from diffode.schedules.base import VPSchedule

__all__ = ["CosineVP", "DiscreteVP", "LinearVP", "clip_log_alphas"]


def _interp(x: Tensor, xp: Tensor, fp: Tensor) -> tuple[Tensor, Tensor]:
    """Piecewise-linear interpolation of ``fp(xp)`` at ``x``, extrapolating the end segments.

    ``xp`` must be increasing. Returns the values and the slopes of the segments used.
    """
    ns = namespace(x)
    flat = x.reshape(-1)
    idx = ns.clamp(ns.searchsorted(xp, flat.contiguous() if ns is torch else flat), 1, xp.shape[0] - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    y0, y1 = fp[idx - 1], fp[idx]
    slope = (y1 - y0) / (x1 - x0)
    y = y0 + slope * (x.reshape(-1) - x0)
    return y.reshape(x.shape), slope.reshape(x.shape)


def _as_float64_vector(name: str, values) -> Tensor:
    """A 1-D float64 CPU copy of a sequence of numbers, with errors that name the argument."""
    if isinstance(values, Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {values.dtype}")
        tensor = values.detach()
    else:
        try:
            tensor = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{name} must be a 1-D sequence or tensor of numbers, got {type(values).__name__} "
                            f"({error})") from None
    tensor = tensor.to("cpu", torch.float64)
    if tensor.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.numel() < 2:
        raise ValueError(f"{name} needs at least 2 entries, got {tensor.numel()}")
    bad = (~torch.isfinite(tensor)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name} contains NaN or Inf ({len(bad)} {'entries' if len(bad) > 1 else 'entry'}; first: {name}[{bad[0]}] = "
                         f"{tensor[bad[0]].item()!r})")
    return tensor


def _check_entries(name: str, values: Tensor, ok: Tensor, allowed: str) -> None:
    bad = (~ok).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name} must {allowed}; {len(bad)} {'entries do' if len(bad) > 1 else 'entry does'} not, the first is {name}[{bad[0]}] = "
                         f"{values[bad[0]].item()!r} (values range over [{values.min().item():g}, "
                         f"{values.max().item():g}])")


# A step must move the half log-SNR by this many times its own float64 round-off (eps times the size of
# log alpha, log sigma and lambda there); below it float64 cannot tell the times of that step apart.
_LAMBDA_RESOLUTION = 1000.0


def _check_lambda_resolves_time(name: str, values: Tensor, log_alphas: Tensor) -> None:
    """Reject a schedule whose half log-SNR changes across a step by less than float64 can resolve.

    Such a step (a beta of 1e-17 after 0.5, say) leaves $\\lambda$ flat, or flat but for round-off,
    so no time in it can be recovered from $\\lambda$ and ``inverse_lambda`` has no meaning there.
    Above the threshold ``inverse_lambda`` is exact to round-off in $\\lambda$ and resolves the time
    to about ``1 / _LAMBDA_RESOLUTION`` of the step or better.
    """
    log_sigmas = 0.5 * torch.log(-torch.expm1(2.0 * log_alphas))
    lams = log_alphas - log_sigmas
    size = log_alphas.abs() + log_sigmas.abs() + lams.abs()
    round_off = torch.finfo(torch.float64).eps * torch.maximum(size[:-1], size[1:])
    drop = lams[:-1] - lams[1:]
    bad = (~(drop > _LAMBDA_RESOLUTION * round_off)).nonzero().flatten().tolist()
    if bad:
        i = bad[0] + 1
        raise ValueError(f"step {i} ({name}[{i}] = {values[i].item()!r}) moves the half log-SNR by only "
                         f"{drop[i - 1].item():.3g}, less than {_LAMBDA_RESOLUTION:g} times its float64 round-off "
                         f"({round_off[i - 1].item():.3g}): lambda_t cannot tell the times within it apart, so "
                         f"inverse_lambda has no meaning there; merge that step into a neighbour or make it larger "
                         f"({len(bad)} such step{'s' if len(bad) > 1 else ''})")


def clip_log_alphas(log_alphas: Tensor, clip_lambda: float) -> Tensor:
    """Drop the trailing entries of a decreasing ``log_alphas`` whose half log-SNR is below ``clip_lambda``.

    This is DPM-Solver v2's numerical clipping for cosine-beta schedules (``clip_lambda = -5.1``).

    Raises:
        ValueError: If it would leave fewer than 2 entries.
    """
    lams = log_alphas - 0.5 * torch.log(-torch.expm1(2.0 * log_alphas))
    n_below = int((lams < clip_lambda).sum())
    if n_below >= log_alphas.numel() - 1:
        raise ValueError(f"clip_lambda={clip_lambda} would remove all but {log_alphas.numel() - n_below} of "
                         f"{log_alphas.numel()} steps (the half log-SNR of the first step is "
                         f"{lams[0].item():.4g}); lower clip_lambda or pass clip_lambda=None")
    return log_alphas[: log_alphas.numel() - n_below]


class DiscreteVP(VPSchedule):
    r"""The schedule of a model trained on discrete steps $n = 0, \dots, N-1$ (DDPM betas).

    Step $n$ sits at continuous time $t_n = (n+1)/N$, and $\log\alpha_t$ is interpolated
    piecewise-linearly in $t$ between those points (linearly extrapolated just outside them),
    with $\log\alpha_{t_n} = \tfrac12\sum_{i\le n}\log(1-\beta_i)$.

    Args:
        betas: The training betas, a 1-D sequence in (0, 1). Give exactly one of ``betas`` and
            ``alphas_cumprod``.
        alphas_cumprod: The cumulative products $\bar\alpha_n = \prod_{i\le n}(1-\beta_i)$, a
            strictly decreasing 1-D sequence in (0, 1).
        clip_lambda: Drop the trailing steps whose half log-SNR falls below this value (-5.1 as in
            DPM-Solver v2; it keeps cosine-beta schedules such as i-DDPM's stable). ``None``
            turns the clipping off. Clipping changes $N$ and with it the time mapping.

    Attributes:
        N: The number of discrete steps kept after clipping.

    Raises:
        ValueError: For entries outside (0, 1), NaN or Inf, and for a step so small (a beta of
            1e-15 where $\alpha$ is far from 1) that $\lambda_t$ changes across it by less than
            float64 can resolve: no time in such a step could be recovered by :meth:`inverse_lambda`.
            Any larger step inverts to round-off in $\lambda$; the time it returns is as exact as
            $\lambda$'s round-off divided by the slope $|\mathrm d\lambda/\mathrm dt|$ allows.
    """

    def __init__(self, betas: Sequence[float] | Tensor | None = None, *,
                 alphas_cumprod: Sequence[float] | Tensor | None = None, clip_lambda: float | None = -5.1):
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("DiscreteVP needs exactly one of betas= and alphas_cumprod=, got "
                             + ("both" if betas is not None else "neither"))
        name = "betas" if betas is not None else "alphas_cumprod"
        values = _as_float64_vector(name, betas if betas is not None else alphas_cumprod)
        if betas is not None:
            _check_entries(name, values, (values > 0) & (values < 1), "lie in (0, 1)")
            log_alphas = 0.5 * torch.cumsum(torch.log1p(-values), 0)
        else:
            # 1 would put lambda = +inf at t_min: no solver can step there.
            _check_entries(name, values, (values > 0) & (values < 1), "lie in (0, 1)")
            increasing = (values[1:] >= values[:-1]).nonzero().flatten().tolist()
            if increasing:
                i = increasing[0]
                raise ValueError(f"alphas_cumprod must be strictly decreasing, got alphas_cumprod[{i}] = "
                                 f"{values[i].item()!r} <= alphas_cumprod[{i + 1}] = {values[i + 1].item()!r}")
            log_alphas = 0.5 * torch.log(values)
        if clip_lambda is not None:
            clip_lambda = check_finite_number("clip_lambda", clip_lambda)
            log_alphas = clip_log_alphas(log_alphas, clip_lambda)
        _check_lambda_resolves_time(name, values, log_alphas)
        self.clip_lambda = clip_lambda
        self.N = int(log_alphas.numel())
        self.T = 1.0
        self.t_min = 1.0 / self.N
        self.log_alpha_array = log_alphas
        self.t_array = torch.linspace(0.0, 1.0, self.N + 1, dtype=torch.float64)[1:]
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"DiscreteVP(N={self.N}, clip_lambda={self.clip_lambda})"

    @property
    def default_t_end(self) -> float:
        return 1.0 / self.N

    def _arrays(self, like: Tensor) -> tuple[Tensor, Tensor]:
        xp = namespace(like)
        if xp is not torch:  # a JAX array: the same tables as constants of its dtype
            return xp.asarray(self.t_array.numpy(), like.dtype), xp.asarray(self.log_alpha_array.numpy(), like.dtype)
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self.t_array.to(like.device, like.dtype), self.log_alpha_array.to(like.device, like.dtype))
        return self._cache[key]

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        t_array, log_alpha_array = self._arrays(t)
        return _interp(t, t_array, log_alpha_array)[0]

    def f(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        t_array, log_alpha_array = self._arrays(t)
        return _interp(t, t_array, log_alpha_array)[1]

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        lam = as_time(lam)
        t_array, log_alpha_array = self._arrays(lam)
        # log alpha is piecewise linear and decreasing in t, so its inverse is exact.
        target = self.log_alpha_from_lambda(lam)
        xp = namespace(lam)
        return _interp(target, xp.flip(log_alpha_array, (0,)), xp.flip(t_array, (0,)))[0]

    def to_discrete(self, t: Tensor | Number) -> Tensor:
        """The network's own time input, ``(t - 1/N) * 1000`` (t = 1/N -> 0, t = 1 -> 999 for N = 1000)."""
        return (as_time(t) - 1.0 / self.N) * 1000.0


class LinearVP(VPSchedule):
    r"""The VP SDE of score-based generative modelling, $\beta(t) = \beta_0 + t(\beta_1 - \beta_0)$.

    $\log\alpha_t = -\tfrac14 t^2(\beta_1-\beta_0) - \tfrac12 t\beta_0$ on $t\in(0, 1]$; the inverse
    of $\lambda_t$ is closed form.

    Args:
        beta_0: $\beta$ at $t = 0$, >= 0.
        beta_1: $\beta$ at $t = 1$, >= ``beta_0`` and > 0.
    """

    def __init__(self, beta_0: float = 0.1, beta_1: float = 20.0):
        beta_0 = check_finite_number("beta_0", beta_0, nonnegative=True)
        beta_1 = check_finite_number("beta_1", beta_1, positive=True)
        if beta_0 > beta_1:
            raise ValueError(f"beta_0 must be <= beta_1, got beta_0={beta_0} > beta_1={beta_1}")
        self.beta_0, self.beta_1 = beta_0, beta_1
        self.T, self.t_min = 1.0, 0.0

    def __repr__(self) -> str:
        return f"LinearVP(beta_0={self.beta_0}, beta_1={self.beta_1})"

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return -0.25 * t * t * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def f(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return -0.5 * (self.beta_0 + t * (self.beta_1 - self.beta_0))

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        lam = as_time(lam)
        # -2 log alpha = log(1 + e^{-2 lambda}) on a VP path.
        xp = namespace(lam)
        return self.time_from_integral(xp.logaddexp(xp.zeros_like(lam), -2.0 * lam))

    def time_from_integral(self, integral: Tensor) -> Tensor:
        r"""The time t with $\int_0^t \beta = -2\log\alpha_t$ equal to ``integral`` (>= 0).

        Solves the quadratic $\beta_0 t + \tfrac12(\beta_1-\beta_0)t^2 = I$ in the form without
        cancellation, $t = 2I / (\sqrt{\beta_0^2 + 2(\beta_1-\beta_0)I} + \beta_0)$. Shared with
        :class:`~diffode.schedules.SubVP`, whose $\alpha_t$ is this schedule's.
        """
        root = namespace(integral).sqrt(self.beta_0**2 + 2.0 * (self.beta_1 - self.beta_0) * integral)
        return 2.0 * integral / (root + self.beta_0)


class CosineVP(VPSchedule):
    r"""The cosine schedule of improved DDPM in continuous time.

    $\alpha_t = \cos\!\big(\tfrac{t+s}{1+s}\tfrac\pi2\big) / \cos\!\big(\tfrac{s}{1+s}\tfrac\pi2\big)$.
    $\lambda_t \to -\infty$ as $t \to 1$, so the schedule is truncated at ``T`` < 1.

    Args:
        s: The offset that keeps $\beta$ finite near $t = 0$.
        T: The noisy end; 0.9946 by default, as DPM-Solver uses for this schedule.
    """

    def __init__(self, s: float = 0.008, T: float = 0.9946):
        self.s = check_finite_number("s", s, positive=True)
        self.T = check_finite_number("T", T, positive=True)
        if self.T >= 1.0:
            raise ValueError(f"T must be < 1 (lambda is -inf at t = 1), got {T}")
        self.t_min = 0.0
        self._scale = math.pi / (2.0 * (1.0 + self.s))
        self._u0 = self.s * self._scale

    def __repr__(self) -> str:
        return f"CosineVP(s={self.s}, T={self.T})"

    def log_alpha(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        delta = t * self._scale
        # cos(u0 + d)/cos(u0) = 1 - 2 sin^2(d/2) - tan(u0) sin(d): no cancellation as t -> 0.
        xp = namespace(t)
        return xp.log1p(-2.0 * xp.sin(0.5 * delta) ** 2 - math.tan(self._u0) * xp.sin(delta))

    def f(self, t: Tensor | Number) -> Tensor:
        t = as_time(t)
        return -self._scale * torch.tan(t * self._scale + self._u0)

    def inverse_lambda(self, lam: Tensor | Number) -> Tensor:
        lam = as_time(lam)
        log_alpha = self.log_alpha_from_lambda(lam)
        # Not arccos(alpha cos u0) / scale - s, which loses all relative precision of small t. With
        # d = t * scale, m = 1 - alpha = 2 sin^2(d/2) + tan(u0) sin(d) becomes a quadratic in
        # tau = tan(d/2): (2 - m) tau^2 + 2 tan(u0) tau - m = 0, whose root is taken without cancellation.
        xp = namespace(lam)
        m = -xp.expm1(log_alpha)
        k = math.tan(self._u0)
        tau = m / (k + xp.sqrt(k * k + m * (2.0 - m)))
        return 2.0 * xp.atan(tau) / self._scale
