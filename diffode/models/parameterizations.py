r"""What a network predicts, and how to turn it into the noise and data predictions.

With $x_t = \alpha_t x_0 + \sigma_t\epsilon$, a network may predict the noise $\epsilon$, the data
$x_0$, the velocity $v = \alpha_t\epsilon - \sigma_t x_0$ or the score
$\nabla_x\log p_t(x) = -\epsilon/\sigma_t$. This module is the one place that converts between
them. Each conversion is written as ``scale * (u + c * w)`` with Python-number coefficients, so that
it costs one fused tensor operation; the scale is folded into the integrators' step weights.
"""

from __future__ import annotations

import abc
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from diffode._utils import check_choice

__all__ = ["Data", "Noise", "Parameterization", "Scaled", "Score", "Velocity", "get_parameterization"]

Coeff = float | Tensor


class Scaled(NamedTuple):
    """A tensor times a scale, ``value = tensor * scale``; the scale is a float or a broadcastable tensor."""

    tensor: Tensor
    scale: Coeff = 1.0

    def value(self) -> Tensor:
        """The materialised tensor."""
        if isinstance(self.scale, float) and self.scale == 1.0:
            return self.tensor
        return self.tensor * self.scale


def axpy(u: Tensor, w: Tensor, c: Coeff) -> Tensor:
    """``u + c * w`` as one fused operation when ``c`` is a Python number."""
    if isinstance(c, Tensor):
        return u + c * w
    return torch.add(u, w, alpha=c)


class Parameterization(abc.ABC):
    """A network output type. ``alpha`` and ``sigma`` are floats or tensors broadcastable to ``x``."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def noise(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Scaled:
        """The noise prediction $\\hat\\epsilon$ from the network output."""

    @abc.abstractmethod
    def data(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Scaled:
        """The data prediction $\\hat x_0$ from the network output."""

    @abc.abstractmethod
    def from_noise(self, eps: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """The network output that corresponds to the noise prediction ``eps`` at ``x``."""

    def to_noise(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """:meth:`noise`, materialised."""
        return self.noise(out, x, alpha, sigma).value()

    def to_data(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Tensor:
        """:meth:`data`, materialised."""
        return self.data(out, x, alpha, sigma).value()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Noise(Parameterization):
    r"""The network predicts the noise: $\hat x_0 = (x - \sigma_t\hat\epsilon)/\alpha_t$."""

    name, aliases = "noise", ("eps", "epsilon")

    def noise(self, out, x, alpha, sigma):
        return Scaled(out)

    def data(self, out, x, alpha, sigma):
        return Scaled(axpy(x, out, -sigma), 1.0 / alpha)

    def from_noise(self, eps, x, alpha, sigma):
        return eps


class Data(Parameterization):
    r"""The network predicts the data: $\hat\epsilon = (x - \alpha_t\hat x_0)/\sigma_t$."""

    name, aliases = "data", ("x_start", "x0", "sample")

    def noise(self, out, x, alpha, sigma):
        return Scaled(axpy(x, out, -alpha), 1.0 / sigma)

    def data(self, out, x, alpha, sigma):
        return Scaled(out)

    def from_noise(self, eps, x, alpha, sigma):
        return axpy(x, eps, -sigma) / alpha


class Velocity(Parameterization):
    r"""The network predicts $v = \alpha_t\epsilon - \sigma_t x_0$.

    Then $\hat\epsilon = (\sigma_t x + \alpha_t v)/(\alpha_t^2+\sigma_t^2)$ and
    $\hat x_0 = (\alpha_t x - \sigma_t v)/(\alpha_t^2+\sigma_t^2)$ (the denominators are 1 for
    VP schedules).
    """

    name, aliases = "v", ("velocity", "v_prediction")

    def noise(self, out, x, alpha, sigma):
        return Scaled(axpy(out, x, sigma / alpha), alpha / (alpha * alpha + sigma * sigma))

    def data(self, out, x, alpha, sigma):
        return Scaled(axpy(x, out, -sigma / alpha), alpha / (alpha * alpha + sigma * sigma))

    def from_noise(self, eps, x, alpha, sigma):
        x0 = axpy(x, eps, -sigma) / alpha
        return alpha * eps - sigma * x0


class Score(Parameterization):
    r"""The network predicts the score $\nabla_x\log p_t(x) = -\hat\epsilon/\sigma_t$."""

    name, aliases = "score", ()

    def noise(self, out, x, alpha, sigma):
        return Scaled(out, -sigma)

    def data(self, out, x, alpha, sigma):
        return Scaled(axpy(x, out, sigma * sigma), 1.0 / alpha)

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
