r"""Log-likelihoods through the probability-flow ODE and the instantaneous change of variables.

The probability-flow ODE carries $x_{t_{end}}$ to $z = x_T$ deterministically, and along it
$\mathrm d\log p_t(x_t)/\mathrm dt = -\nabla\cdot v(x_t, t)$ for the ODE's velocity $v$. diffode
integrates, as its reference solver does, in the half log-SNR $\lambda$ for the scaled state
$y = x/\alpha_\lambda$ (the linear part of the ODE is then exact and the vector field stays smooth
as $t \to 0$):
$$\frac{\mathrm dy}{\mathrm d\lambda} = -e^{-\lambda}\hat\epsilon(\alpha y, t_\lambda),\qquad
\frac{\mathrm d}{\mathrm d\lambda}\log p^{(y)}_\lambda = \sigma_\lambda\,\nabla_x\cdot\hat\epsilon(x, t_\lambda),$$
and the density of $x$ differs from that of $y$ by the Jacobian $\alpha^D$. So, with $D$ the number of
dimensions of one sample,
$$\log p_{t_{end}}(x) = \log p_T(z) + D\log\frac{\alpha_T}{\alpha_{t_{end}}}
- \int_{\lambda_{end}}^{\lambda_T}\sigma_\lambda\,\nabla_x\cdot\hat\epsilon\,\mathrm d\lambda,$$
with $\log p_T$ the prior of the SDE (:meth:`diffode.sde.SDE.prior_logp`) unless another is given.
The divergence is exact (one backward pass per dimension; small $D$) or Hutchinson's unbiased
estimate $\mathbb E[v^\top J v]$ with Rademacher or Gaussian probes $v$, drawn once and held fixed
along the trajectory; several probes share one trajectory and give a standard error.

What is computed is the density of the model's marginal at ``t_end`` > 0, not at 0: compare it with
the exact $\log p_{t_{end}}$ (as the tests do for Gaussian mixtures); for data, a small ``t_end``
(score_sde: $10^{-5}$) makes the difference negligible against the dequantisation of 8-bit data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from diffode._utils import Number, check_choice, check_finite_number, check_int, check_tensor
from diffode.integrators.reference import lambda_rhs, odeint_options
from diffode.models.predictor import Predictor
from diffode.sde import SDE

__all__ = ["Likelihood", "bits_per_dim", "log_likelihood"]



@dataclass
class Likelihood:
    """The result of :func:`log_likelihood`, per sample.

    Attributes:
        log_p: $\\log p_{t_{end}}(x)$ in nats, shape ``(B,)`` (with Hutchinson's estimator: the mean
            over the probes).
        stderr: The standard error of ``log_p`` over the probes (``None`` for the exact divergence
            or a single probe).
        log_p_probes: One estimate per probe, shape ``(n_probes, B)`` (``None`` for the exact divergence).
        z: The latent $x_T$ reached by the probability-flow ODE.
        prior_log_p: $\\log p_T(z)$ under the prior used.
        nfe: Evaluations of the ODE's right-hand side (each costs one model call and its backward passes).
        dims: $D$, the number of dimensions of one sample.
    """

    log_p: Tensor
    stderr: Tensor | None
    log_p_probes: Tensor | None
    z: Tensor
    prior_log_p: Tensor
    nfe: int
    dims: int

    def bits_per_dim(self, *, data_scale: float) -> Tensor:
        """:func:`bits_per_dim` of :attr:`log_p`."""
        return bits_per_dim(self.log_p, self.dims, data_scale=data_scale)


def bits_per_dim(log_p: Tensor, dims: int, *, data_scale: float) -> Tensor:
    r"""Bits per dimension of 8-bit data, from the log density of the model's data space.

    Pixels $k\in\{0,\dots,255\}$ are mapped to $u = k/256 \in [0, 1)$ (uniformly dequantised) and then to
    the model's space by $x = a u + b$, $a$ = ``data_scale``. The density of $u$ is
    $p_u = a^D p_x$, and a bin of the 8-bit grid has width $1/256$, so
    $$\mathrm{bpd} = -\frac{\log p_x(x)}{D\ln 2} - \log_2 a + 8.$$
    This is score_sde's offset $\log_2 \frac{\mathrm du}{\mathrm dx} + 8$: 8 for data in $[0, 1]$
    (``data_scale=1``), 7 for data centred to $[-1, 1]$ (``data_scale=2``).

    Args:
        log_p: Log densities in nats, any shape.
        dims: $D$, the number of dimensions of one sample (e.g. ``3 * 32 * 32``).
        data_scale: $a = \mathrm dx/\mathrm du$, > 0.
    """
    dims = check_int("dims", dims, low=1)
    data_scale = check_finite_number("data_scale", data_scale, positive=True)
    return -log_p / (dims * math.log(2.0)) - math.log2(data_scale) + 8.0


def _probes(kind: str, n: int, x: Tensor, generator: torch.Generator | None) -> Tensor:
    shape = (n, *x.shape)
    if kind == "gaussian":
        return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
    signs = torch.randint(0, 2, shape, generator=generator, device=x.device)
    return (2 * signs - 1).to(x.dtype)


def _divergence(eps: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """$\\nabla_x\\cdot\\hat\\epsilon$ per sample: exact (``probes is None``; shape ``(1, B)``) or
    $v^\\top J v$ per probe (shape ``(K, B)``). ``eps`` must depend on the leaf ``x``.

    One batched backward pass either way: the cotangents are the probes, or for the exact trace the
    $D$ unit vectors, whose vector-Jacobian products are the rows of $J$ (its diagonal is the trace).
    """
    batch, dims = eps.shape[0], eps[0].numel()
    if probes is None:
        units = torch.eye(dims, dtype=eps.dtype, device=eps.device)
        cotangents = units.unsqueeze(1).expand(dims, batch, dims).reshape(dims, *eps.shape)
    else:
        cotangents = probes
    (rows,) = torch.autograd.grad(eps, x, grad_outputs=cotangents, is_grads_batched=True)
    rows = rows.reshape(cotangents.shape[0], batch, dims)
    if probes is None:
        return torch.diagonal(rows, dim1=0, dim2=2).sum(-1).unsqueeze(0)
    return (rows * probes.reshape(probes.shape[0], batch, dims)).sum(-1)


def log_likelihood(model: Predictor, x: Tensor, *, t_end: Number | None = None, divergence: str = "exact",
                   probe: str = "rademacher", n_probes: int = 1, generator: torch.Generator | None = None,
                   prior_logp: Callable[[Tensor], Tensor] | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                   method: str = "dopri5", dtype: torch.dtype | None = None) -> Likelihood:
    r"""$\log p_{t_{end}}(x)$ of each sample under ``model``'s probability-flow ODE.

    Args:
        model: A :class:`~diffode.models.Predictor` (``dd.wrap(net, schedule, ...)``,
            ``dd.GaussianMixture(...).predictor(schedule)``); its noise prediction must be
            differentiable in ``x``.
        x: The data, shape ``(B, ...)``, taken as samples at time ``t_end``.
        t_end: The time the data sit at, in ``[t_min, T)`` and > 0 (default: the schedule's
            ``default_t_end``; score_sde uses $10^{-5}$ for its continuous VP and VE models).
        divergence: ``"exact"`` (one backward pass per dimension) or ``"hutchinson"``.
        probe: Hutchinson's probe distribution, ``"rademacher"`` or ``"gaussian"``.
        n_probes: The number of Hutchinson probes (all integrated along one trajectory).
        generator: The random source of the probes.
        prior_logp: $\log p_T$ of the latent, ``prior_logp(z) -> (B,)``; default: the prior of
            ``diffode.sde.SDE(model.schedule)``.
        rtol: Relative tolerance of the ODE solver.
        atol: Absolute tolerance of the ODE solver.
        method: A torchdiffeq adaptive method (``"dopri5"``: RK45; ``"dopri8"``, ...).
        dtype: The dtype to compute in (default: that of ``x``); float64 for accurate likelihoods.

    Returns:
        A :class:`Likelihood`.

    Raises:
        TypeError: For a model that is not a Predictor or an ``x`` that is not a floating tensor.
        ValueError: For an invalid time, divergence, probe type, probe count or tolerance.
    """
    if not isinstance(model, Predictor):
        raise TypeError(f"model must be a diffode Predictor (dd.wrap(...) or an analytic model's .predictor()), "
                        f"got {type(model).__name__}")
    x = check_tensor("x", x)
    schedule = model.schedule
    t_end = schedule.default_t_end if t_end is None else t_end
    t_end = schedule.check_time("t_end", t_end)
    if not 0.0 < t_end < schedule.T:
        raise ValueError(f"t_end must lie in (0, T) = (0, {schedule.T:g}) for {schedule!r}, got {t_end!r}")
    check_choice("divergence", divergence, ("exact", "hutchinson"))
    check_choice("probe", probe, ("rademacher", "gaussian"))
    n_probes = check_int("n_probes", n_probes, low=1)
    if divergence == "exact" and n_probes != 1:
        raise ValueError(f"n_probes={n_probes} needs divergence='hutchinson' (the exact divergence uses no probes)")
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)
    if prior_logp is None:
        prior_logp = SDE(schedule).prior_logp
    elif not callable(prior_logp):
        raise TypeError(f"prior_logp must be a callable prior_logp(z) -> (B,), got {type(prior_logp).__name__}")
    dtype = x.dtype if dtype is None else dtype
    x = x.detach().to(dtype)
    batch, dims = x.shape[0], math.prod(x.shape[1:])
    probes = None if divergence == "exact" else _probes(probe, n_probes, x, generator)

    end, start = schedule.points([t_end, schedule.T])
    nfe = 0

    field = lambda_rhs(model, schedule.point_at_lambda)  # the probability-flow ODE, written once

    def rhs(lam: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            y = state[0].detach().requires_grad_(True)
            drift = field(lam, y)
            # d log p / d lambda along the flow is minus the divergence of the drift in y.
            div = _divergence(drift, y, probes)
        return drift.detach(), -div.detach()

    y0 = x / end.alpha
    acc0 = torch.zeros(1 if probes is None else n_probes, batch, dtype=dtype, device=x.device)
    lams = torch.tensor([end.lam, start.lam], dtype=torch.float64)
    options = odeint_options(method, end.lam, start.lam)
    ys, accs = odeint(rhs, (y0, acc0), lams, rtol=rtol, atol=atol, method=method, options=options)
    z = ys[-1] * start.alpha
    prior = prior_logp(z)
    estimates = prior + dims * (math.log(start.alpha) - math.log(end.alpha)) - accs[-1]   # (K, B)
    if probes is None:
        return Likelihood(estimates[0], None, None, z, prior, nfe, dims)
    stderr = estimates.std(0) / math.sqrt(n_probes) if n_probes > 1 else None
    return Likelihood(estimates.mean(0), stderr, estimates, z, prior, nfe, dims)
