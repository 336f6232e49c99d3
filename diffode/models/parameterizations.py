r"""What a network predicts, and how to turn it into the noise and data predictions.

With $x_t = \alpha_t x_0 + \sigma_t\epsilon$, a network may predict the noise $\epsilon$, the data
$x_0$, the velocity $v = \alpha_t\epsilon - \sigma_t x_0$ or the score
$\nabla_x\log p_t(x) = -\epsilon/\sigma_t$. This module is the one place that converts between
them. Each parameterization is one linear map, ``prediction = a * x + b * out``
(:meth:`Parameterization.affine`); a conversion is applied as ``scale * (u + c * w)`` with
Python-number coefficients, one fused tensor operation, the scale being folded into the
integrators' step weights. A :class:`Deferred` prediction leaves even that operation to the update
that first uses it.
"""

from __future__ import annotations

import abc
import sys
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor

from diffode import kernels
from diffode._utils import check_choice

__all__ = ["Data", "Deferred", "Noise", "Parameterization", "Scaled", "Score", "Velocity", "get_parameterization"]

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


class Deferred:
    r"""A prediction not yet computed: $a\,x + b\,\mathrm{out}$, from a network output ``out``.

    :meth:`ModelWrapper.predict_deferred <diffode.models.wrapper.ModelWrapper.predict_deferred>`
    returns one instead of a :class:`Scaled` when the conversion needs ``x`` (a noise-predicting
    network asked for the data prediction, say), so that the update that first uses the prediction
    can compute it in the same pass over memory (:func:`diffode.integrators.base.exponential_update`)
    and :meth:`settle` it. :meth:`scaled` gives the prediction either way, computing it (one fused
    operation) if no update did.

    Attributes:
        x: The state the network saw.
        a: The coefficient of ``x`` (a Python float).
        out: The network's raw output.
        b: The coefficient of ``out`` (a Python float).
    """

    __slots__ = ("x", "a", "out", "b", "_value")

    def __init__(self, x: Tensor, a: float, out: Tensor, b: float):
        self.x, self.a, self.out, self.b = x, a, out, b
        self._value: Scaled | None = None

    @property
    def settled(self) -> bool:
        """Whether the prediction was computed."""
        return self._value is not None

    def settle(self, value: Scaled) -> None:
        """Record the computed prediction (and drop the references to ``x`` and ``out``)."""
        self._value = value
        self.x = self.out = None

    def scaled(self) -> Scaled:
        """The prediction as a :class:`Scaled` tensor, computed on first use."""
        if self._value is None:
            self.settle(_affine_value(self.x, self.out, self.a, self.b))
        return self._value

    def output_is_exclusive(self) -> bool:
        """Whether nothing but this object refers to ``out`` or its memory, so that computing the
        prediction into ``out``'s memory cannot be observed: the network kept no reference to it,
        no view of it exists, it is not itself a view (a slice of a larger output, say), autograd
        recorded nothing. Conservative: ``False`` when unsure, and the prediction then goes to new
        memory."""
        out = self.out
        if not kernels.OWNERSHIP_CHECKS or out is None or type(out) is not Tensor or out.requires_grad or out._base is not None:
            return False
        del out
        return (self._out_refcount() == _SOLE_SLOT_REFCOUNT and self.out._use_count() == 1
                and torch._C._storage_Use_Count(self.out.untyped_storage()._cdata) == 2)

    def _out_refcount(self) -> int:
        return sys.getrefcount(self.out)

    def __repr__(self) -> str:
        state = "settled" if self.settled else f"a={self.a!r}, b={self.b!r}"
        return f"Deferred({state})"


def _affine_value(x: Tensor, out: Tensor, a: Coeff, b: Coeff) -> Scaled:
    r"""$a\,x + b\,\mathrm{out}$ as one fused operation (scaled by the larger coefficient)."""
    if not isinstance(a, Tensor) and a == 0.0:
        return Scaled(out, b)
    if isinstance(a, Tensor) or isinstance(b, Tensor):  # per-sample times: off the fixed-grid hot path
        return Scaled(out * b + x * a)
    u, w, c, scale = (x, out, b / a, a) if abs(a) >= abs(b) else (out, x, a / b, b)
    recyclable = out.shape == x.shape and out.dtype == x.dtype and not (
        torch.is_grad_enabled() and (x.requires_grad or out.requires_grad))
    spare = kernels.spare_like(x) if recyclable else None
    if spare is None:
        return Scaled(torch.add(u, w, alpha=c), scale)
    return Scaled(torch.add(u, w, alpha=c, out=spare), scale)


def _sole_slot_refcount() -> int:
    # What Deferred._out_refcount reports for an output that only the Deferred holds, measured along
    # the very call path output_is_exclusive uses (the number differs between CPython versions).
    probe = Deferred(torch.empty(0), 0.0, torch.empty(1), 1.0)
    return probe._out_refcount()


_SOLE_SLOT_REFCOUNT = _sole_slot_refcount()


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

    def noise(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Scaled:
        """The noise prediction $\\hat\\epsilon$ from the network output."""
        a, b = self.affine("noise", alpha, sigma)
        return _affine_value(x, out, a, b)

    def data(self, out: Tensor, x: Tensor, alpha: Coeff, sigma: Coeff) -> Scaled:
        """The data prediction $\\hat x_0$ from the network output."""
        a, b = self.affine("data", alpha, sigma)
        return _affine_value(x, out, a, b)

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
        return axpy(x, eps, -sigma) / alpha


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
        x0 = axpy(x, eps, -sigma) / alpha
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
