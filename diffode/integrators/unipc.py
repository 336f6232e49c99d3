r"""UniPC: the unified predictor (UniP) and corrector (UniC) of Zhao et al., at one evaluation per step."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor

from diffode._utils import check_choice, check_int
from diffode.integrators.base import PREDICTIONS, History, Integrator, State, Update, apply_lower_order_final, exponential_update
from diffode.integrators.coefficients import phi, taylor_factors
from diffode.models.predictor import Predictor
from diffode.schedules.base import TimePoint

__all__ = ["UniPC", "unipc_factors"]

VARIANTS = ("bh1", "bh2")
MAX_PREDICTOR_ORDER = 4


def unipc_factors(n_nodes: int, z: float, variant: str) -> list[float]:
    r"""The factors $g_k$ of a UniPC update through ``n_nodes`` model outputs (the step start first).

    UniPC writes the integral term as $h\,[\varphi_1(z)\,m_0 + \tfrac{B(z)}{z}\sum_j \rho_j D_j]$,
    with $D_j = (m_j - m_0)/r_j$ and $\rho$ solving $\sum_j \rho_j r_j^{k-1} = k!\,z\,\varphi_{k+1}(z)/B(z)$,
    $k = 1, \dots, n-1$. Solved exactly, that is the weight formula of
    :func:`~diffode.integrators.coefficients.update_weights` with $g_k = k!\,\varphi_{k+1}(z)$, and
    $B$ cancels. With a single difference (UniP-2, UniC-1) the paper and its code fix $\rho_1 = 1/2$
    instead, which is $g_1 = B(z)/(2z)$: $\tfrac12$ for ``"bh1"`` ($B(z) = z$) and
    $\tfrac12\varphi_1(z)$ for ``"bh2"`` ($B(z) = e^z - 1$). That choice is where the variants differ.

    Args:
        n_nodes: The number of model outputs (>= 1).
        z: The $\varphi$-argument: $-h$ in data form, $h$ in noise form.
        variant: ``"bh1"`` or ``"bh2"``.
    """
    if n_nodes != 2:
        return taylor_factors(n_nodes, z)
    b_over_z = 1.0 if variant == "bh1" else phi(1, z)
    return [phi(1, z), 0.5 * b_over_z]


class UniPC(Integrator):
    r"""UniPC: the UniP-$p$ predictor with the UniC-$p$ corrector, one model evaluation per step.

    **Predictor** (UniP-$q$) from $s$ to $t$, $h = \lambda_t - \lambda_s$, through the output $m_0$ at
    $s$ and $q-1$ earlier outputs $m_j$ at $r_j = (\lambda_j - \lambda_s)/h < 0$; in data form
    ($z = -h$, $m = \hat x_0$)
    $$\tilde x_t = \frac{\sigma_t}{\sigma_s}x_s + \alpha_t h\Big[\varphi_1(z)\,m_0
    + \frac{B(z)}{z}\sum_{j=1}^{q-1}\rho_j\,\frac{m_j - m_0}{r_j}\Big],$$
    in noise form ($z = h$, $m = \hat\epsilon$) $\alpha_t/\alpha_s$ and $-\sigma_t$ take the places of
    $\sigma_t/\sigma_s$ and $\alpha_t$. The coefficients $\rho$ solve $\sum_j \rho_j r_j^{k-1} =
    k!\,z\,\varphi_{k+1}(z)/B(z)$ for $k < q$, with $B(z) = z$ (``"bh1"``) or $e^z - 1$ (``"bh2"``);
    for $q = 2$ the paper sets $\rho_1 = \tfrac12$ (see :func:`unipc_factors`).

    **Corrector** (UniC-$q$): the next step evaluates the model at $\tilde x_t$ once, $m_t$, and
    first recomputes the step from $x_s$ with $m_t$ as one more node ($r = 1$) and $q$ equations
    ($\rho_1 = \tfrac12$ for $q = 1$); that corrected $x_t$ starts the next prediction, and $m_t$
    (taken at $\tilde x_t$) is stored. The correction costs no evaluation; the last step is not
    corrected (that would need one more evaluation).

    * Order: $p + 1$ with the corrector, $p$ without (``order`` says which).
    * Model evaluations per step: 1.
    * Error estimate: none.

    **Step orders** are UniP orders, as diffusers' ``this_order``: a step of order $q \le p$ is
    UniP-$q$, corrected by UniC-$q$ at the start of the next step. The first steps warm up
    ($q = 1, 2, \dots$ while the outputs accumulate) and ``lower_order_final`` lowers the last
    ones, as diffusers' ``UniPCMultistepScheduler`` does. ``order`` is the nominal global order:
    with the corrector, $p + 1$, one more than the highest step order; a step asked at order
    $p + 1$ (:meth:`~diffode.integrators.Integrator.step`'s default) is UniP-$p$.

    Args:
        predictor_order: $p$, the order of UniP (1 to 4), diffusers' ``solver_order``.
        predict: ``"data"`` (diffusers' ``predict_x0=True``, the default) or ``"noise"``.
        variant: ``"bh1"`` or ``"bh2"`` (diffusers' ``solver_type``); the paper recommends
            ``"bh1"`` for unconditional sampling at very few steps and ``"bh2"`` otherwise.
        corrector: Apply UniC (``False``: UniP alone, order $p$).
        disable_corrector: Indices of the steps whose result is left uncorrected (diffusers'
            ``disable_corrector``; correcting a step of large $h$ at the start can hurt
            guided sampling).

    ??? cite "Reference"
        Zhao, Bai, Rao, Zhou, Lu, *UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
        of Diffusion Models*, NeurIPS 2023, arXiv:2302.04867.
    """

    evals_per_step = 1

    def __init__(self, predictor_order: int = 2, predict: str = "data", variant: str = "bh2", corrector: bool = True,
                 disable_corrector: Iterable[int] = ()):
        p = check_int("predictor_order", predictor_order, low=1)
        if p > MAX_PREDICTOR_ORDER:
            raise ValueError(f"predictor_order must be 1 to {MAX_PREDICTOR_ORDER} for UniPC, got {p}")
        if not isinstance(corrector, bool):
            raise TypeError(f"corrector must be a bool, got {type(corrector).__name__}")
        if isinstance(disable_corrector, (str, bytes)) or not isinstance(disable_corrector, Iterable):
            raise TypeError(f"disable_corrector must be a collection of step indices, got {type(disable_corrector).__name__}")
        self.predictor_order = p
        self.predict = check_choice("predict", predict, PREDICTIONS)
        self.variant = check_choice("variant", variant, VARIANTS)
        self.corrector = corrector
        self.disable_corrector = tuple(sorted({check_int("disable_corrector entries", i, low=0)
                                               for i in disable_corrector}))
        self.order = p + 1 if corrector else p

    def __repr__(self) -> str:
        extra = f", disable_corrector={self.disable_corrector}" if self.disable_corrector else ""
        return (f"UniPC(predictor_order={self.predictor_order}, predict={self.predict!r}, variant={self.variant!r}, "
                f"corrector={self.corrector}{extra})")

    def step_orders(self, n_steps: int, lower_order_final: bool | int = False) -> list[int]:
        r"""UniP orders $1, 2, \dots, p$ (the warm-up), the last ones lowered by
        :func:`~diffode.integrators.base.apply_lower_order_final`."""
        return apply_lower_order_final([min(self.predictor_order, i + 1) for i in range(n_steps)], lower_order_final)

    def _update(self, x: Tensor, s: TimePoint, t: TimePoint, values: Sequence[Tensor], lams: Sequence[float]) -> Tensor:
        h = t.lam - s.lam
        # (With h = 0 the update is the identity and ignores the nodes.)
        nodes = [(lam - s.lam) / h for lam in lams] if h != 0.0 else [0.0] * len(lams)
        z = -h if self.predict == "data" else h
        return exponential_update(x, s, t, values, nodes, self.predict, "taylor",
                                  unipc_factors(len(values), z, self.variant))

    def _step(self, model: Predictor, x: Tensor, s: TimePoint, t: TimePoint, state: State, order: int) -> Update:
        order = min(order, self.predictor_order)  # p + 1, the nominal order (step's default), is UniP-p
        m_s = self.evaluate(model, x, s)
        history = state.history
        if state.carry is not None:
            x_p, p, q = state.carry  # the previous step: its start and its order
            if state.step_index - 1 not in self.disable_corrector:
                # UniC: the previous step again, through its own outputs and m_s (at r = 1).
                used = history[-q:][::-1]
                x = self._update(x_p, p, s, [u.value for u in used] + [m_s], [u.lam for u in used] + [s.lam])
        current = History(s.lam, m_s)
        used = (current, *history[::-1])[:order]
        x_t = self._update(x, s, t, [u.value for u in used], [u.lam for u in used])
        return Update(x_t, history=(*history, current)[-self.predictor_order:], carry=(x, s, order) if self.corrector else None)
