r"""What a network predicts, and how to turn it into the noise and data predictions.

With $x_t = \alpha_t x_0 + \sigma_t\epsilon$, a network may predict the noise $\epsilon$, the data
$x_0$, the velocity $v = \alpha_t\epsilon - \sigma_t x_0$, the score
$\nabla_x\log p_t(x) = -\epsilon/\sigma_t$, the flow velocity $u = \epsilon - x_0$, the data
through a denoiser that sees the state in VE scaling (k-diffusion), or EDM's preconditioned
$F_\theta$. This module is the one place that converts between them. Each parameterization is one
linear map, ``prediction = a * x + b * out`` (:meth:`Parameterization.affine`), applied with
Python-number coefficients (or per-sample tensors), computed into a new tensor: a network's
output is never written to. A parameterization may also scale the network's input
(:meth:`Parameterization.input_scale`) and name the time input it expects
(:meth:`Parameterization.default_time_input`).
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from diffode._utils import check_choice, check_finite_number

__all__ = ["Data", "Denoiser", "EDMPreconditioned", "Flow", "Noise", "Parameterization", "Score", "Velocity",
           "affine_value", "get_parameterization"]

Coeff = float | Tensor


def affine_value(x: Tensor, out: Tensor, a: Coeff, b: Coeff) -> Tensor:
    r"""$a\,x + b\,\mathrm{out}$ (``a`` exactly ``0.0`` skips ``x``; ``out`` itself when that is all).

    Neither input is modified: diffode never writes into a tensor it did not allocate.
    """
    if not isinstance(a, Tensor) and a == 0.0:
        return out if not isinstance(b, Tensor) and b == 1.0 else out * b
    if isinstance(a, Tensor) or isinstance(b, Tensor):  # per-sample times
        return (out * b).add_(x * a)
    # Accumulate into the one new tensor: no temporary beside it, so a solve's peak memory stays at
    # k + 2 copies of x for an order-k multistep method.
    return torch.mul(out, b).add_(x, alpha=a)


class Parameterization(abc.ABC):
    """A network output type. ``alpha`` and ``sigma`` are floats or tensors broadcastable to ``x``.

    A subclass gives :meth:`affine`, the linear map from ``(x, out)`` to the noise and data
    predictions; the conversions below all follow from it.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def affine(self, kind: str, alpha: Coeff, sigma: Coeff) -> tuple[Coeff, Coeff]:
        """``(a, b)`` with the ``"noise"`` or ``"data"`` prediction equal to ``a * x + b * out``
        (``a`` is exactly ``0.0`` when the prediction does not involve ``x``)."""

    def convert(self, kind: str, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The ``"noise"`` or ``"data"`` prediction from the network output (a new tensor)."""
        a, b = self.affine(kind, alpha, sigma)
        return affine_value(x, out, a, b)

    def from_noise(self, eps: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The network output that corresponds to the noise prediction ``eps`` at ``x``.

        The inverse of the ``"data"`` map: with $\\hat x_0 = (x - \\sigma\\epsilon)/\\alpha = a x + b o$,
        the output is $o = (\\hat x_0 - a x)/b$.
        """
        a, b = self.affine("data", alpha, sigma)
        return ((x - sigma * eps) / alpha - a * x) / b

    def input_scale(self, alpha: Coeff, sigma: Coeff) -> Coeff:
        """The factor the wrapper multiplies the state by before the network sees it (1: none)."""
        return 1.0

    def default_time_input(self, schedule):
        """The time input this kind of network takes, or ``None`` to let the schedule decide
        (see :func:`~diffode.models.time_inputs.default_time_input`)."""

    def to_noise(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The noise prediction $\\hat\\epsilon$ from the network output."""
        return self.convert("noise", out, x, alpha, sigma)

    def to_data(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The data prediction $\\hat x_0$ from the network output."""
        return self.convert("data", out, x, alpha, sigma)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Noise(Parameterization):
    r"""The network predicts the noise: $\hat x_0 = (x - \sigma_t\hat\epsilon)/\alpha_t$."""

    name, aliases = "noise", ("eps", "epsilon")

    def affine(self, kind, alpha, sigma):
        return (0.0, 1.0) if kind == "noise" else (1.0 / alpha, -sigma / alpha)

    def from_noise(self, eps, x, alpha, sigma):
        return eps


class Data(Parameterization):
    r"""The network predicts the data: $\hat\epsilon = (x - \alpha_t\hat x_0)/\sigma_t$."""

    name, aliases = "data", ("x_start", "x0", "sample")

    def affine(self, kind, alpha, sigma):
        return (1.0 / sigma, -alpha / sigma) if kind == "noise" else (0.0, 1.0)

    def from_noise(self, eps, x, alpha, sigma):
        return (x - sigma * eps) / alpha


class Velocity(Parameterization):
    r"""The network predicts $v = \alpha_t\epsilon - \sigma_t x_0$.

    Then $\hat\epsilon = (\sigma_t x + \alpha_t v)/(\alpha_t^2+\sigma_t^2)$ and
    $\hat x_0 = (\alpha_t x - \sigma_t v)/(\alpha_t^2+\sigma_t^2)$ (the denominators are 1 for
    VP schedules).
    """

    name, aliases = "v", ("velocity", "v_prediction")

    # The map inverts [[alpha, sigma], [-sigma, alpha]] (x = alpha x0 + sigma eps, v = alpha eps - sigma x0),
    # whose determinant is alpha^2 + sigma^2 on any path: so it is right off VP too (there v is no longer
    # the angular velocity d x / d arctan(sigma/alpha), only the same combination of eps and x0).

    def affine(self, kind, alpha, sigma):
        norm = alpha * alpha + sigma * sigma
        return (sigma / norm, alpha / norm) if kind == "noise" else (alpha / norm, -sigma / norm)

    def from_noise(self, eps, x, alpha, sigma):
        x0 = (x - sigma * eps) / alpha
        return alpha * eps - sigma * x0


class Score(Parameterization):
    r"""The network predicts the score $\nabla_x\log p_t(x) = -\hat\epsilon/\sigma_t$."""

    name, aliases = "score", ()

    def affine(self, kind, alpha, sigma):
        return (0.0, -sigma) if kind == "noise" else (1.0 / alpha, sigma * sigma / alpha)

    def from_noise(self, eps, x, alpha, sigma):
        return -eps / sigma


class Flow(Parameterization):
    r"""The network predicts the flow velocity $u = \epsilon - x_0$ (rectified flow, SD3, Flux).

    On :class:`~diffode.schedules.FlowMatching`, $x = (1-\sigma)x_0 + \sigma\epsilon$, so $u$ is the
    velocity of the path in its noise level, $\mathrm dx/\mathrm d\sigma$, and the network's
    $\mathbb E[\epsilon - x_0\mid x]$ is the probability-flow ODE's $\mathrm dx/\mathrm d\sigma$ (in the
    unshifted time, $\mathrm dx/\mathrm dt = u\,\mathrm d\sigma/\mathrm dt$). On any other path $u$ is
    still defined as $\epsilon - x_0$, the same linear combination (not that path's $\mathrm dx/\mathrm dt$),
    and with $x = \alpha x_0 + \sigma\epsilon$,
    $$\hat\epsilon = \frac{x + \alpha u}{\alpha + \sigma},\qquad \hat x_0 = \frac{x - \sigma u}{\alpha + \sigma}$$
    (the denominator is 1 on FlowMatching). It differs from diffusers' ``v_prediction``,
    $v = \alpha\epsilon - \sigma x_0$.
    """

    name, aliases = "flow", ("flow_velocity", "flow_prediction")

    def affine(self, kind, alpha, sigma):
        norm = alpha + sigma
        return (1.0 / norm, alpha / norm) if kind == "noise" else (1.0 / norm, -sigma / norm)

    def from_noise(self, eps, x, alpha, sigma):
        return eps - (x - sigma * eps) / alpha


class Denoiser(Data):
    r"""A denoiser in variance-exploding coordinates (k-diffusion, EDM's ``EDMPrecond``): $D(x/\alpha_t, \sigma_t/\alpha_t) = \hat x_0$.

    k-diffusion writes every path as $x/\alpha_t = x_0 + (\sigma_t/\alpha_t)\,\epsilon$: its denoisers
    see the state divided by $\alpha_t$ (:meth:`input_scale`) and the VE noise level
    $\sigma_t/\alpha_t = e^{-\lambda_t}$ (:class:`~diffode.models.time_inputs.VESigma`), and return the
    data prediction. On VE and EDM paths ($\alpha = 1$) this is ``"data"``.
    """

    name, aliases = "denoiser", ("k_diffusion",)

    def input_scale(self, alpha, sigma):
        return 1.0 / alpha

    def default_time_input(self, schedule):
        from diffode.models.time_inputs import VESigma

        return VESigma(schedule)


class EDMPreconditioned(Parameterization):
    r"""EDM's preconditioned network $F_\theta$ (Karras et al. 2022, Table 1), on any path.

    In VE coordinates $\tilde x = x/\alpha_t$, $\tilde\sigma = \sigma_t/\alpha_t$, EDM's denoiser is
    $$D(\tilde x, \tilde\sigma) = c_{skip}\,\tilde x + c_{out}\,F_\theta(c_{in}\,\tilde x,\; c_{noise}),\quad
    c_{skip} = \frac{\sigma_d^2}{\tilde\sigma^2+\sigma_d^2},\;
    c_{out} = \frac{\tilde\sigma\sigma_d}{\sqrt{\tilde\sigma^2+\sigma_d^2}},\;
    c_{in} = \frac{1}{\sqrt{\tilde\sigma^2+\sigma_d^2}},\;
    c_{noise} = \tfrac14\log\tilde\sigma,$$
    with $\sigma_d$ = ``sigma_data``. The output side is the affine map $\hat x_0 = (c_{skip}/\alpha_t)\,x
    + c_{out}\,o$ (and $\hat\epsilon = (x - \alpha_t\hat x_0)/\sigma_t$); the input side is
    :meth:`input_scale`, $c_{in}/\alpha_t$, and the time input
    :class:`~diffode.models.time_inputs.EDMNoiseLevel`, $c_{noise}$, which :func:`~diffode.models.wrap`
    and :func:`~diffode.models.from_edm` apply.

    Args:
        sigma_data: The standard deviation of the data, $\sigma_d$ (EDM: 0.5), > 0.

    ??? cite "Reference"
        Karras et al., *Elucidating the Design Space of Diffusion-Based Generative Models*,
        arXiv:2206.00364, Table 1.
    """

    name, aliases = "edm", ("edm_precond",)

    def __init__(self, sigma_data: float = 0.5):
        self.sigma_data = check_finite_number("sigma_data", sigma_data, positive=True)

    def __repr__(self) -> str:
        return f"EDMPreconditioned(sigma_data={self.sigma_data})"

    def affine(self, kind, alpha, sigma):
        sd = self.sigma_data
        s = sigma / alpha                       # the VE noise level
        root = (s * s + sd * sd) ** 0.5
        if kind == "data":                      # c_skip / alpha, c_out
            return sd * sd / (root * root * alpha), s * sd / root
        # (1 - c_skip) / sigma = s / (alpha (s^2 + sd^2)) and -alpha c_out / sigma = -sd / root: no 0/0 as s -> 0.
        return s / (root * root * alpha), -sd / root

    def input_scale(self, alpha, sigma):
        s = sigma / alpha
        return 1.0 / (alpha * (s * s + self.sigma_data ** 2) ** 0.5)

    def default_time_input(self, schedule):
        from diffode.models.time_inputs import EDMNoiseLevel

        return EDMNoiseLevel(schedule)


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {}
for _cls in (Noise, Data, Velocity, Score, Flow, Denoiser, EDMPreconditioned):
    for _name in (_cls.name, *_cls.aliases):
        PARAMETERIZATIONS[_name] = _cls


def get_parameterization(p: str | Parameterization) -> Parameterization:
    """A :class:`Parameterization` from its name or alias.

    The names are ``"noise"``, ``"data"``, ``"v"``, ``"score"``, ``"flow"``, ``"denoiser"`` and ``"edm"``
    (with ``sigma_data=0.5``; pass ``EDMPreconditioned(sigma_data)`` for another).
    """
    if isinstance(p, Parameterization):
        return p
    if not isinstance(p, str):
        raise TypeError(f"parameterization must be a name or a Parameterization, got {type(p).__name__}")
    check_choice("parameterization", p, PARAMETERIZATIONS)
    return PARAMETERIZATIONS[p]()
