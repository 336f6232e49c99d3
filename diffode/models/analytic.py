r"""Analytic models whose exact noise prediction is known: the ground truth of every accuracy test.

For data $x_0 \sim \sum_k w_k\,\mathcal N(\mu_k, s_k^2 I)$, the marginal at time $t$ is
$p_t = \sum_k w_k\,\mathcal N(\alpha_t\mu_k, v_k I)$ with $v_k = \alpha_t^2 s_k^2 + \sigma_t^2$, so
$$\hat\epsilon(x, t) = -\sigma_t\nabla_x\log p_t(x) = \sigma_t\sum_k r_k\,\frac{x - \alpha_t\mu_k}{v_k},
\qquad \hat x_0(x, t) = \sum_k r_k\,\frac{\sigma_t^2\mu_k + \alpha_t s_k^2 x}{v_k},$$
with responsibilities $r_k$ computed by a stable log-sum-exp.

:meth:`GaussianMixture.eps` and :meth:`GaussianMixture.x0` also take JAX arrays (with
$\alpha_t, \sigma_t$ from a schedule's own formulas, which take them too): the same exact
predictions then drive the JAX backend's tests and benchmarks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffode._namespace import namespace
from diffode._utils import Number, as_time
from diffode.models.predictor import Predictor, resolve_point
from diffode.schedules.base import NoiseSchedule, TimePoint

__all__ = ["AnalyticPredictor", "GaussianMixture"]


class GaussianMixture:
    """A mixture of isotropic Gaussians, with its exact noise prediction under any schedule.

    Args:
        weights: Mixture weights, shape ``(K,)``, positive (normalised to sum to 1).
        means: Component means, shape ``(K, *event_shape)``; samples have shape ``(B, *event_shape)``.
        stds: Component standard deviations $s_k$, shape ``(K,)``, positive.
    """

    def __init__(self, weights: Sequence[float] | Tensor, means: Sequence | Tensor, stds: Sequence[float] | Tensor):
        means = torch.as_tensor(means, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), got {tuple(means.shape)}")
        k = means.shape[0]
        if weights.numel() != k or stds.numel() != k:
            raise ValueError(f"weights and stds need {k} entries (one per mean), got {weights.numel()} and {stds.numel()}")
        for name, v in (("weights", weights), ("stds", stds), ("means", means)):
            if not torch.isfinite(v).all():
                raise ValueError(f"{name} contains NaN or Inf")
        if not (weights > 0).all() or not (stds > 0).all():
            raise ValueError("weights and stds must be positive")
        self.weights = weights / weights.sum()
        self.means = means
        self.stds = stds
        self.event_shape = tuple(means.shape[1:])
        self._cache: dict = {}

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, event_shape={self.event_shape})"

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        xp = namespace(x)
        if xp is not torch:  # JAX arrays: the same parameters as constants of x's dtype
            return tuple(xp.asarray(v.numpy(), x.dtype) for v in (self.weights.log(), self.means.reshape(self.n_components, -1),
                                                                 self.stds))
        key = (x.device, x.dtype)
        if key not in self._cache:
            self._cache[key] = (self.weights.log().to(x.device, x.dtype),
                                self.means.reshape(self.n_components, -1).to(x.device, x.dtype),
                                self.stds.to(x.device, x.dtype))
        return self._cache[key]

    def _terms(self, x: Tensor, alpha, sigma):
        """Flattened x, per-component differences, variances and responsibilities."""
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, *{self.event_shape}), got {tuple(x.shape)}")
        log_w, mu, s = self._params(x)
        xp = namespace(x)
        xf = x.reshape(x.shape[0], 1, -1)
        a = _per_sample(alpha, 3)
        sg = _per_sample(sigma, 3)
        diff = xf - a * mu[None]                                # (B, K, D)
        var = (a * s.reshape(1, -1, 1)) ** 2 + sg * sg          # (B or 1, K, 1)
        d = xf.shape[-1]
        logits = log_w.reshape(1, -1) - 0.5 * (diff * diff / var).sum(-1) - 0.5 * d * xp.log(var[..., 0])
        # exp(logits - logsumexp) rather than torch.softmax, which is pathologically slow on some CPU builds.
        resp = xp.exp(logits - xp.logsumexp(logits, dim=1, keepdim=True))[..., None]  # (B, K, 1)
        return xf, diff, var, resp, logits

    def eps(self, x: Tensor, alpha, sigma) -> Tensor:
        """Exact $\\hat\\epsilon$ given $\\alpha_t, \\sigma_t$ (floats or per-sample tensors)."""
        _, diff, var, resp, _ = self._terms(x, alpha, sigma)
        return (_per_sample(sigma, 2) * (resp * diff / var).sum(1)).reshape(x.shape)

    def x0(self, x: Tensor, alpha, sigma) -> Tensor:
        """Exact $\\hat x_0 = E[x_0\\mid x_t]$ given $\\alpha_t, \\sigma_t$."""
        xf, _, var, resp, _ = self._terms(x, alpha, sigma)
        _, mu, s = self._params(x)
        a = _per_sample(alpha, 3)
        sg = _per_sample(sigma, 3)
        post = (sg * sg * mu[None] + a * (s * s).reshape(1, -1, 1) * xf) / var
        return (resp * post).sum(1).reshape(x.shape)

    def _alpha_sigma(self, x: Tensor, t, schedule: NoiseSchedule):
        p = resolve_point(schedule, t, x)
        return p.alpha, p.sigma

    def log_prob(self, x: Tensor, t: Tensor | Number, schedule: NoiseSchedule) -> Tensor:
        """$\\log p_t(x)$ per sample (differentiable in x)."""
        alpha, sigma = self._alpha_sigma(x, t, schedule)
        xf, _, var, _, logits = self._terms(x, alpha, sigma)
        return torch.logsumexp(logits, dim=1) - 0.5 * xf.shape[-1] * math.log(2 * math.pi)

    def score(self, x: Tensor, t: Tensor | Number, schedule: NoiseSchedule) -> Tensor:
        """Exact score $\\nabla_x\\log p_t(x) = -\\hat\\epsilon/\\sigma_t$."""
        alpha, sigma = self._alpha_sigma(x, t, schedule)
        return -self.eps(x, alpha, sigma) / sigma

    def sample(self, n: int, *, generator: torch.Generator | None = None, dtype=torch.float64, device=None) -> Tensor:
        """Draw ``n`` samples of $x_0$."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k].reshape(-1, *([1] * len(self.event_shape))) * z
        return x.to(device=device, dtype=dtype)

    def pf_solution(self, x_s: Tensor, s: Number, t: Number, schedule: NoiseSchedule) -> Tensor:
        """Closed-form probability-flow solution from time ``s`` to ``t`` (one component only).

        $x_t = \\alpha_t\\mu + \\sqrt{v_t/v_s}\\,(x_s - \\alpha_s\\mu)$ with $v = \\alpha^2 s^2 + \\sigma^2$.
        """
        if self.n_components != 1:
            raise ValueError("the closed-form probability-flow solution needs a single component")
        ps, pt = schedule.point(float(as_time(s))), schedule.point(float(as_time(t)))
        sd = float(self.stds[0])
        v_s = ps.alpha**2 * sd**2 + ps.sigma**2
        v_t = pt.alpha**2 * sd**2 + pt.sigma**2
        mu = self.means[0].to(x_s.device, x_s.dtype).unsqueeze(0)
        return pt.alpha * mu + math.sqrt(v_t / v_s) * (x_s - ps.alpha * mu)

    def predictor(self, schedule: NoiseSchedule) -> AnalyticPredictor:
        """This mixture as a :class:`~diffode.models.Predictor` under ``schedule``."""
        return AnalyticPredictor(self, schedule)

    def network(self, schedule: NoiseSchedule, parameterization: str = "noise"):
        """A network-like callable ``f(x, t)`` of continuous time ``t`` (tensor ``(B,)``) returning the
        exact ``"noise"``, ``"data"``, ``"v"`` or ``"score"`` output. For testing the wrappers."""
        from diffode.models.parameterizations import get_parameterization

        param = get_parameterization(parameterization)

        def net(x: Tensor, t: Tensor, *args, **kwargs) -> Tensor:
            p = resolve_point(schedule, t, x)
            return param.from_noise(self.eps(x, p.alpha, p.sigma), x, p.alpha, p.sigma)

        return net


def _per_sample(value, ndim: int):
    """A number as it is; an array of per-sample values (or a scalar array) shaped ``(B or 1, 1, ...)`` to ``ndim`` dims."""
    return value if isinstance(value, (int, float)) else value.reshape(-1, *([1] * (ndim - 1)))


class AnalyticPredictor(Predictor):
    """A :class:`GaussianMixture` under a schedule; computes the noise and data predictions directly."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture = mixture
        self.schedule = schedule

    def predict(self, x: Tensor, point: TimePoint, kind: str) -> Tensor:
        if kind == "noise":
            return self.mixture.eps(x, point.alpha, point.sigma)
        return self.mixture.x0(x, point.alpha, point.sigma)

    def __repr__(self) -> str:
        return f"AnalyticPredictor({self.mixture!r}, {self.schedule!r})"
