r"""What a network predicts, and how to turn it into the noise and data predictions.

With $x_t = \alpha_t x_0 + \sigma_t\epsilon$, a network may predict the noise $\epsilon$, the data
$x_0$, the velocity $v = \alpha_t\epsilon - \sigma_t x_0$ or the score
$\nabla_x\log p_t(x) = -\epsilon/\sigma_t$. This module is the one place that converts between
them. Each parameterization is one linear map, ``prediction = a * x + b * out``
(:meth:`Parameterization.affine`), applied with
Python-number coefficients (or per-sample tensors), computed into a new tensor: a network's
output is never written to.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from diffode._utils import check_choice

__all__ = ["Data", "Noise", "Parameterization", "Score", "Velocity", "affine_value", "get_parameterization"]

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

    @abc.abstractmethod
    def from_noise(self, eps: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The network output that corresponds to the noise prediction ``eps`` at ``x``."""

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


PARAMETERIZATIONS: dict[str, type[Parameterization]] = {}
for _cls in (Noise, Data, Velocity, Score):
    for _name in (_cls.name, *_cls.aliases):
        PARAMETERIZATIONS[_name] = _cls


def get_parameterization(p: str | Parameterization) -> Parameterization:
    """A :class:`Parameterization` from its name (``"noise"``, ``"data"``, ``"v"``, ``"score"`` or an alias)."""
    if isinstance(p, Parameterization):
        return p
    if not isinstance(p, str):
        raise TypeError(f"parameterization must be a name or a Parameterization, got {type(p).__name__}")
    check_choice("parameterization", p, PARAMETERIZATIONS)
    return PARAMETERIZATIONS[p]()
