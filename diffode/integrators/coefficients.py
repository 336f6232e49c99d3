r"""Every step coefficient of the exponential integrators, in float64 on the host.

Both forms of the probability-flow ODE have an exact linear part. Over one step from $\lambda_s$ to
$\lambda_t = \lambda_s + h$, with the model output $m$ written as a polynomial in $\tau = \lambda-\lambda_s$,

* data form (DPM-Solver++): $x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t \sum_{n\ge0} h^{n+1}\varphi_{n+1}(-h)\,m^{(n)}(\lambda_s)$,
* noise form (DPM-Solver): $x_t = \frac{\alpha_t}{\alpha_s}x_s - \sigma_t \sum_{n\ge0} h^{n+1}\varphi_{n+1}(h)\,m^{(n)}(\lambda_s)$,

where $\varphi_1(z) = (e^z-1)/z$ and $\varphi_{k+1}(z) = (\varphi_k(z) - 1/k!)/z$. Replacing $m$ by the
polynomial that interpolates the available model outputs at the nodes $c_j h$ gives the update
$\sum_j w_j m_j$ with weights $w = h\,V^{-\top}g$, where $V_{jn} = c_j^n$ and $g_n = n!\,\varphi_{n+1}(z)$.
That one formula yields every DPM-Solver update: the singlestep methods (nodes at $0, r_1, r_2$), the
multistep methods (nodes at the earlier steps, $c_j < 0$, unequal steps included) and the
``"taylor"`` solver type. The ``"dpmsolver"`` solver type of the papers differs only at order two,
where it uses $g_1 = \varphi_1(z)/2$ instead of $\varphi_2(z)$.

Every function here takes host numbers (the fixed-grid solvers: float64 Python numbers) or arrays:
the adaptive loop of :mod:`diffode.jax` calls these same functions on JAX arrays inside its
compiled loop, where the step size is only known in the graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from diffode._namespace import namespace

__all__ = ["phi", "phis", "update_weights", "linear_coefficients"]

# Below this |z| the recursion for phi_k cancels badly; the Taylor series converges fast there.
_SERIES_RADIUS = 1.0
_SERIES_TERMS = 30


def _phi_series(k: int, z, host: bool):
    """The Taylor series of phi_k (used for |z| < 1); a host number stops at round-off."""
    term = 1.0 / math.factorial(k)
    total = term
    for j in range(1, _SERIES_TERMS):
        term = term * z / (j + k)
        total = total + term
        if host and abs(term) < 1e-18 * abs(total):
            break
    return total


def _phi_recursion(k: int, z, expm1):
    """phi_k by the recursion from phi_1 = expm1(z)/z (used for |z| >= 1)."""
    value = expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def phi(k: int, z: Any) -> Any:
    r"""$\varphi_k(z) = \sum_{j\ge0} z^j/(j+k)!$, accurate to round-off for every real ``z``.

    Args:
        k: The index, >= 0 ($\varphi_0(z) = e^z$).
        z: The argument: a Python float, or a torch or JAX array (elementwise, both branches
            computed and the right one selected, so that it traces into a compiled graph).
    """
    if k < 0:
        raise ValueError(f"phi needs k >= 0, got {k}")
    if not isinstance(z, (int, float)):
        xp = namespace(z)
        if k == 0:
            return xp.exp(z)
        small = xp.abs(z) < _SERIES_RADIUS
        # Each branch sees a harmless argument where it is not selected (no 0/0 in the graph).
        return xp.where(small, _phi_series(k, xp.where(small, z, 0.0), False),
                        _phi_recursion(k, xp.where(small, 1.0, z), xp.expm1))
    z = float(z)
    if k == 0:
        return math.exp(z)
    if abs(z) < _SERIES_RADIUS:
        return _phi_series(k, z, True)
    return _phi_recursion(k, z, math.expm1)


def phis(n: int, z: float) -> list[float]:
    r"""$[\varphi_1(z), \dots, \varphi_n(z)]$."""
    return [phi(k, z) for k in range(1, n + 1)]


def taylor_factors(n: int, z: float, solver_type: str = "taylor") -> list[float]:
    r"""$g_k = k!\,\varphi_{k+1}(z)$ for $k < n$; the ``"dpmsolver"`` type uses $g_1 = \varphi_1(z)/2$ when $n = 2$."""
    g = [math.factorial(k) * phi(k + 1, z) for k in range(n)]
    if solver_type == "dpmsolver" and n == 2:
        g[1] = 0.5 * g[0]
    return g


def update_weights(h: float, nodes: Sequence[float], z: float, solver_type: str = "taylor",
                   factors: Sequence[float] | None = None) -> list[float]:
    r"""Weights $w_j$ of the model outputs at ``nodes`` (in units of ``h``) for one exponential step.

    Args:
        h: The step in $\lambda$ (negative for inversion).
        nodes: Positions $c_j$ of the model outputs, relative to the step start in units of $h$
            (0 for the output at the start, $r$ for a stage at $\lambda_s + rh$, negative for
            earlier steps). They must be distinct.
        z: The argument of the $\varphi$-functions: $-h$ in data form, $h$ in noise form.
        solver_type: ``"taylor"`` (exact integration of the interpolant) or ``"dpmsolver"``.
        factors: Override of the factors $g$ (used to reproduce other implementations).

    Returns:
        The weights, so that the integral term is $\sum_j w_j m_j$.
    """
    n = len(nodes)
    g = list(factors) if factors is not None else taylor_factors(n, z, solver_type)
    if n == 1:
        return [h * g[0]]
    vander = np.vander(np.asarray(nodes, dtype=np.float64), n, increasing=True)
    if all(isinstance(v, (int, float)) for v in g):
        return (h * np.linalg.solve(vander.T, np.asarray(g, dtype=np.float64))).tolist()
    xp = namespace(*g)  # arrays (the compiled adaptive loop): the same solve, in the graph
    weights = h * xp.linalg.solve(xp.asarray(vander.T, dtype=g[0].dtype), xp.stack(g))
    return [weights[j] for j in range(n)]


def linear_coefficients(s, t, predict: str) -> tuple[float, float, float]:
    r"""The exact linear part of a step from point ``s`` to point ``t``.

    Returns ``(a, b, z)`` such that $x_t = a\,x_s + b\sum_j w_j m_j$ with the weights computed
    at $\varphi$-argument ``z``: data form $(\sigma_t/\sigma_s, \alpha_t, -h)$, noise form
    $(\alpha_t/\alpha_s, -\sigma_t, h)$.
    """
    h = t.lam - s.lam
    if predict == "data":
        return t.sigma / s.sigma, t.alpha, -h
    return t.alpha / s.alpha, -t.sigma, h
