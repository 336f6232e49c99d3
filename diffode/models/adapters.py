r"""Adapters for networks written for other libraries: k-diffusion denoisers and EDM networks.

Both libraries write every Gaussian path in variance-exploding coordinates: the state
$\tilde x = x/\alpha_t$ and the noise level $\tilde\sigma = \sigma_t/\alpha_t = e^{-\lambda_t}$, so that
$\tilde x = x_0 + \tilde\sigma\,\epsilon$. A diffode schedule gives $\alpha_t$ and $\sigma_t$ at every
time, so such a network runs under any diffode schedule (VP, VE, EDM, flow) with the exact change of
coordinates. Each adapter is :func:`~diffode.models.wrap` with the matching parameterization
(:class:`~diffode.models.parameterizations.Denoiser` or
:class:`~diffode.models.parameterizations.EDMPreconditioned`) and time input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from diffode.models.parameterizations import EDMPreconditioned
from diffode.models.predictor import Predictor
from diffode.models.wrapper import wrap
from diffode.schedules.base import NoiseSchedule

__all__ = ["from_edm", "from_k_diffusion"]


def from_k_diffusion(denoiser: Callable, schedule: NoiseSchedule, *, extra_args: dict | None = None) -> Predictor:
    r"""A k-diffusion denoiser ``D(x, sigma, **extra_args) -> x0`` as a diffode :class:`~diffode.models.Predictor`.

    The denoiser is called, as k-diffusion calls it, with the state in VE scaling $x/\alpha_t$ and a
    ``(B,)`` tensor of $\sigma = \sigma_t/\alpha_t$, and returns $\hat x_0$. This covers k-diffusion's
    ``Denoiser`` wrappers, ``VDenoiser``, ``CompVisDenoiser`` (which maps ``sigma`` to its own
    discrete steps) and EDM's preconditioned ``EDMPrecond`` (pass its labels as
    ``extra_args={"class_labels": labels}``). For the diffode schedule of a k-diffusion VP model use
    the model's own ``DiscreteVP(alphas_cumprod=...)``; for ``sample_euler``-style EDM sampling
    use :class:`~diffode.schedules.EDM`.

    Args:
        denoiser: ``denoiser(x, sigma, **extra_args)`` returning the data prediction, shape of ``x``.
        schedule: The diffode schedule to sample under.
        extra_args: Keyword arguments passed to every call (conditioning, ``cond_scale``, ...).

    Returns:
        The predictor (a :class:`~diffode.models.ModelWrapper`).
    """
    return wrap(denoiser, schedule, "denoiser", model_kwargs=extra_args)


def from_edm(net: Callable, schedule: NoiseSchedule, *, sigma_data: float | None = None, class_labels: Any = None,
             preconditioned: bool = False, model_kwargs: dict | None = None) -> Predictor:
    r"""An EDM network as a diffode :class:`~diffode.models.Predictor`.

    By default ``net`` is EDM's raw network $F_\theta$ (``SongUNet``, ``DhariwalUNet``), called as
    ``net(c_in * x / alpha_t, c_noise, class_labels=class_labels)``, and its output is combined
    with the skip connection as in Karras et al. (2022), Table 1
    (:class:`~diffode.models.parameterizations.EDMPreconditioned`). With ``preconditioned=True``,
    ``net`` is the whole denoiser ``EDMPrecond``, ``net(x / alpha_t, sigma, class_labels=...)``
    returning $\hat x_0$, which applies its own ``sigma_data``.

    Args:
        net: The network.
        schedule: The diffode schedule to sample under (EDM's own: :class:`~diffode.schedules.EDM`).
        sigma_data: The data standard deviation of the preconditioning (default 0.5, EDM's).
        class_labels: Passed as ``class_labels=`` to every call (``None`` for unconditional networks).
        preconditioned: Whether ``net`` already applies the preconditioning (returns $\hat x_0$).
        model_kwargs: Further keyword arguments passed to every call.

    Returns:
        The predictor (a :class:`~diffode.models.ModelWrapper`).

    Raises:
        ValueError: For ``sigma_data`` given with ``preconditioned=True`` (the network applies its own).
    """
    kwargs = {"class_labels": class_labels, **(model_kwargs or {})}
    if preconditioned:
        if sigma_data is not None:
            raise ValueError("sigma_data has no effect with preconditioned=True: the network applies its own "
                             "preconditioning; drop sigma_data or pass the raw network F")
        return wrap(net, schedule, "denoiser", model_kwargs=kwargs)
    return wrap(net, schedule, EDMPreconditioned(0.5 if sigma_data is None else sigma_data), model_kwargs=kwargs)
