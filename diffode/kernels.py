r"""The one tensor operation every DPM-Solver step applies, fused into a single pass where possible.

Each update is a linear combination $x_t = a\,x + \sum_j c_j m_j$ of the state and stored model
outputs, with Python-float coefficients. Eager PyTorch applies it as one scaled copy of $x$ and one
``add_`` per term: $2 + 3k$ passes over memory and $k + 1$ kernel launches for $k$ outputs, where
the memory floor is $k + 2$ passes (read $x$ and the outputs, write $x_t$). :func:`linear_combination`
reaches the floor in one kernel:

* on the CPU, with ``diffode._combine``, a small C extension built when diffode is installed
  (vectorised for AVX-512, AVX2 or plain x86-64, picked at load time);
* on CUDA, with a kernel that PyTorch's jiterator compiles (NVRTC) the first time a given number
  of terms is combined, then caches;

and falls back to the eager operations, with the same arithmetic, everywhere else. The fused path
runs when all of these hold:

* it is not switched off (:func:`set_enabled`, :func:`use_kernels`, or the environment variable
  ``DIFFODE_KERNELS=0``);
* every tensor is a plain tensor of one dtype, float32 or float64, one device and the shape of
  ``x`` (on the CPU also contiguous), at most eight in all, and the coefficients are Python numbers
  (not per-sample tensors);
* no tensor requires a gradient while autograd is on (the kernels record no graph);
* on the CPU: the extension was built (:func:`available`), and the tensors are small enough that
  PyTorch itself would use one thread (fewer than :data:`PARALLEL_GRAIN` elements) or PyTorch runs on
  one thread (``torch.get_num_threads() == 1``): the kernel is single-threaded, and eager operations
  on many threads can beat it on large tensors.

Fused and eager results agree to rounding (each rounds every product and sum, possibly in another
order); ``tests/test_kernels.py`` checks both against float64 arithmetic. The fused CPU pass
computes every element alike, so a sample's result does not depend on the batch around it.

Two more savings on the CPU, both taken only when nothing else can observe them (checked with
reference and use counts, :data:`OWNERSHIP_CHECKS`; on interpreters where those are not verified,
CPython before 3.10 or after 3.13 and free-threaded builds, they are skipped):

* a noise-predicting network's output converted to the data prediction inside the update that
  first uses it (:func:`convert_and_combine`), written into the output's own memory;
* the memory of a state :func:`diffode.solve` has finished with, reused for the next new state
  (:func:`recycling`): fresh memory costs page faults, which on some systems take longer than the
  update itself.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

try:
    from diffode import _combine
except ImportError:  # built without a C compiler: the eager path does everything on the CPU
    _combine = None

try:  # PyTorch's runtime-compiled elementwise CUDA kernels (NVRTC), in every CUDA build since 1.12
    from torch.cuda import jiterator as _jiterator
except ImportError:
    _jiterator = None

__all__ = ["OWNERSHIP_CHECKS", "PARALLEL_GRAIN", "Recycler", "available", "convert_and_combine", "converts_in_place",
           "cuda_available", "enabled", "linear_combination", "recycling", "set_enabled", "spare_like", "use_kernels"]

#: PyTorch's grain for parallel elementwise operations (``at::internal::GRAIN_SIZE``): smaller
#: tensors run on one thread in eager PyTorch too, so the single-threaded kernel never loses there.
PARALLEL_GRAIN = 32768

#: Whether this interpreter supports the ownership tests (``Deferred.output_is_exclusive`` in
#: :mod:`diffode.models.parameterizations`, :class:`Recycler`): CPython 3.10 to 3.13 with the GIL,
#: whose reference counts were checked against these tests (also after the adaptive interpreter
#: specialises the code), and PyTorch's use counts. Elsewhere the tests answer "not exclusive":
#: no conversion in place, no recycled state, the same results.
OWNERSHIP_CHECKS = (sys.implementation.name == "cpython" and (3, 10) <= sys.version_info[:2] <= (3, 13)
                    and getattr(sys, "_is_gil_enabled", lambda: True)() and hasattr(Tensor, "_use_count")
                    and hasattr(torch._C, "_storage_Use_Count"))

ENV_VAR = "DIFFODE_KERNELS"
_ENV_VALUES = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}
_ITEMSIZE = {torch.float32: 4, torch.float64: 8}
_MAX_TENSORS = 8 if _combine is None else _combine.MAX_TERMS


def _from_environment() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value not in _ENV_VALUES:
        raise ValueError(f"{ENV_VAR} must be one of {sorted(_ENV_VALUES)} (1/on to use the fused kernels, "
                         f"0/off for eager PyTorch only), got {os.environ[ENV_VAR]!r}")
    return _ENV_VALUES[value]


_switched_on = _from_environment()


def available() -> bool:
    """Whether the C extension was built (at install time, where a C compiler was found)."""
    return _combine is not None


def cuda_available() -> bool:
    """Whether the CUDA path can run: a CUDA device and PyTorch's jiterator (NVRTC) are present."""
    return _jiterator is not None and torch.cuda.is_available()


def enabled() -> bool:
    """Whether :func:`linear_combination` may use the fused CPU kernel (built and switched on)."""
    return _combine is not None and _switched_on


def set_enabled(flag: bool) -> bool:
    """Switch the fused kernel on or off for this process; returns the previous setting.

    Args:
        flag: ``True`` to use the kernel where it applies, ``False`` for eager PyTorch only.
    """
    global _switched_on
    if not isinstance(flag, bool):
        raise TypeError(f"flag must be True or False, got {flag!r}")
    previous, _switched_on = _switched_on, flag
    return previous


@contextmanager
def use_kernels(flag: bool) -> Iterator[None]:
    """A context in which the fused kernel is switched on or off (restored on exit).

    Args:
        flag: ``True`` to use the kernel where it applies, ``False`` for eager PyTorch only.
    """
    previous = set_enabled(flag)
    try:
        yield
    finally:
        set_enabled(previous)


def _fusable(x: Tensor, a: float | Tensor, terms: Sequence[tuple[Tensor, float | Tensor]]) -> bool:
    """Whether the combination may take a fused path: switched on, float coefficients, plain tensors
    of one dtype (float32 or float64), device and shape, no gradient, and the device's own rules."""
    if not _switched_on or len(terms) >= _MAX_TENSORS or isinstance(a, Tensor) or type(x) is not Tensor:
        return False
    dtype, n = x.dtype, x.numel()
    if dtype not in _ITEMSIZE or n == 0:
        return False
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return False
    cpu = x.is_cpu
    if cpu:
        if _combine is None or not x.is_contiguous() or (n >= PARALLEL_GRAIN and torch.get_num_threads() != 1):
            return False
    elif not x.is_cuda or _jiterator is None:
        return False
    shape, device = x.shape, x.device
    for tensor, c in terms:
        if (type(tensor) is not Tensor or isinstance(c, Tensor) or tensor.dtype != dtype or tensor.shape != shape
                or (grad and tensor.requires_grad)
                or (not (tensor.is_cpu and tensor.is_contiguous()) if cpu else tensor.device != device)):
            return False
    return True


_CUDA_KERNELS: dict[int, object] = {}


def _cuda_kernel(k: int):
    """The jiterator kernel ``sum_j c_j t_j`` over ``k`` tensors (compiled by NVRTC on first use)."""
    kernel = _CUDA_KERNELS.get(k)
    if kernel is None:
        tensors = ", ".join(f"T t{j}" for j in range(k))
        coefficients = ", ".join(f"T c{j}" for j in range(k))
        body = " + ".join(f"c{j} * t{j}" for j in range(k))
        code = f"template <typename T> T diffode_combine{k}({tensors}, {coefficients}) {{ return {body}; }}"
        kernel = _CUDA_KERNELS[k] = _jiterator._create_jit_fn(code, **{f"c{j}": 0.0 for j in range(k)})
    return kernel


def linear_combination(x: Tensor, a: float | Tensor, terms: Sequence[tuple[Tensor, float | Tensor]]) -> Tensor:
    r"""$a\,x + \sum_j c_j m_j$ in a new tensor: one fused pass where it applies, else eager operations.

    The eager form is one scaled copy of ``x`` and one fused ``add_`` per term, the fewest passes
    binary kernels allow (each fixes one coefficient at 1, so one pass must scale); a tensor
    coefficient (per-sample times) costs one more temporary there.

    Args:
        x: The state.
        a: Its coefficient (a Python number, or a broadcastable tensor on the eager path).
        terms: ``(tensor, coefficient)`` pairs; each tensor has the shape of ``x`` (or broadcasts to
            it, on the eager path), each coefficient is a Python number or a broadcastable tensor.

    Returns:
        The combination, a new tensor of the shape and dtype of ``x``.
    """
    if _fusable(x, a, terms):
        live = [(t, float(c)) for t, c in terms if c != 0.0]
        if x.is_cuda:
            coefficients = {f"c{j}": c for j, c in enumerate((float(a), *[c for _, c in live]))}
            return _cuda_kernel(len(live) + 1)(x, *[t for t, _ in live], **coefficients)
        out = _new_like(x)
        _combine.combine(out.data_ptr(), x.numel(), _ITEMSIZE[x.dtype],
                         (x.data_ptr(), *[t.data_ptr() for t, _ in live]), (float(a), *[c for _, c in live]))
        return out
    return _eager(x, a, terms)


def _eager(x: Tensor, a: float | Tensor, terms: Sequence[tuple[Tensor, float | Tensor]]) -> Tensor:
    spare = None if torch.is_grad_enabled() and x.requires_grad else spare_like(x)
    out = torch.mul(x, a) if spare is None else torch.mul(x, a, out=spare)
    for tensor, c in terms:
        if isinstance(c, Tensor):
            out.add_(tensor * c)
        else:
            out.add_(tensor, alpha=c)
    return out


def converts_in_place(x: Tensor) -> bool:
    """Whether :func:`convert_and_combine` can run for a state like ``x`` at all (the fused CPU path
    is built and switched on and ``x`` is on the CPU): a cheap test before the ownership checks."""
    return _switched_on and _combine is not None and x.is_cpu


def convert_and_combine(x: Tensor, a: float, terms: Sequence[tuple[Tensor, float]], u: Tensor, cu: float,
                        w: Tensor, cw: float, weight: float) -> Tensor | None:
    r"""$m = c_u u + c_w w$ written into ``w``'s memory, and $a\,x + \text{weight}\cdot m + \sum_j c_j m_j$,
    in one pass over memory (the fused CPU path only); ``None`` where that path does not apply.

    This is a model output's conversion (``w`` the network output, ``u`` the state it saw) fused
    into the update that first uses it: $3 + k$ tensor passes where converting first and then
    combining takes $3 + (k + 2)$, and no more memory, as the conversion overwrites ``w``. The
    caller must own ``w`` outright (see
    :meth:`Deferred.output_is_exclusive <diffode.models.parameterizations.Deferred.output_is_exclusive>`).

    Args:
        x: The state.
        a: Its coefficient.
        terms: Further ``(tensor, coefficient)`` pairs.
        u: The first input of the conversion (may be ``x``).
        cu: Its coefficient in the conversion.
        w: The second input of the conversion, overwritten by its result.
        cw: Its coefficient in the conversion.
        weight: The coefficient of the converted value in the combination.

    Returns:
        The combination (a new tensor), with ``w`` now holding $m$; or ``None``, with nothing
        computed or changed, where the fused CPU path does not apply.
    """
    if (not x.is_cpu or isinstance(weight, Tensor) or isinstance(cu, Tensor) or isinstance(cw, Tensor)
            or not _fusable(x, a, (*terms, (u, 1.0), (w, 1.0)))):
        return None
    if u is x:
        addresses, coefficients, conversion = [x.data_ptr(), w.data_ptr()], [float(a), 0.0], [float(cu), float(cw)]
    else:
        addresses = [x.data_ptr(), u.data_ptr(), w.data_ptr()]
        coefficients, conversion = [float(a), 0.0, 0.0], [0.0, float(cu), float(cw)]
    for tensor, c in terms:
        if c != 0.0:
            addresses.append(tensor.data_ptr())
            coefficients.append(float(c))
            conversion.append(0.0)
    if len(addresses) > _MAX_TENSORS:
        return None
    out = _new_like(x)
    _combine.combine(out.data_ptr(), x.numel(), _ITEMSIZE[x.dtype], tuple(addresses), tuple(coefficients),
                     w.data_ptr(), tuple(conversion), float(weight))
    return out


# ---------------------------------------------------------------------------------------------
# Recycling the states a sampling loop is done with
# ---------------------------------------------------------------------------------------------

_local = threading.local()


def spare_like(x: Tensor) -> Tensor | None:
    """A recycled state's memory for a new tensor of ``x``'s shape and dtype, taken from the current
    :func:`recycling` block of this thread, or ``None`` (outside one, or none matches)."""
    spares = getattr(_local, "spares", None)
    if spares:
        for i, spare in enumerate(spares):
            if spare.shape == x.shape and spare.dtype == x.dtype and spare.device == x.device:
                return spares.pop(i)
    return None


def _new_like(x: Tensor) -> Tensor:
    """A new tensor like the contiguous ``x``: recycled memory if there is some, else fresh memory."""
    spare = spare_like(x)
    return torch.empty_like(x) if spare is None else spare


def _refcount_of_one_local() -> int:
    # What Recycler.count reports inside Recycler.give for a tensor that the caller of give holds in
    # exactly one local variable, measured along the same call path (the number differs between
    # CPython versions): a local variable, passed to a method that passes it to count.
    probe = torch.empty(1)
    return Recycler(None)._count_as_give_does(probe)


class Recycler:
    """Takes the states a sampling loop is done with, for the next update to write into.

    An update writes the new state (or a converted model output) into fresh memory; on many systems
    fresh memory costs page faults that take longer than the update itself. :func:`diffode.solve`
    hands each finished state to :meth:`give`, which keeps it only if nothing else can see it, and
    the next step's first new state-sized tensor in the same thread (:func:`spare_like`: the fused
    and eager updates, a deferred conversion) takes that memory instead of allocating. At most one
    state is kept, and it stands in for the next allocation: order-k multistep still holds at most
    k + 2 copies of ``x`` (k + 1 while the network runs).
    """

    _ONE_LOCAL: int | None = None

    def __init__(self, spares: list | None):
        self._spares = spares

    @staticmethod
    def count(tensor: Tensor) -> int:
        """``sys.getrefcount`` of ``tensor``, as :meth:`give` sees it."""
        return sys.getrefcount(tensor)

    def _count_as_give_does(self, tensor: Tensor) -> int:
        return Recycler.count(tensor)

    def give(self, tensor: Tensor) -> bool:
        """Keep ``tensor``'s memory for reuse if the caller's one local variable is the only
        reference to it: no other Python reference (a list of intermediates, a callback, an
        integrator state), no view of its memory, no autograd record. Returns whether it was kept.

        The caller must drop its variable right after and never use the tensor again.
        """
        if (self._spares is None or Recycler._ONE_LOCAL is None or type(tensor) is not Tensor or not tensor.is_cpu
                or tensor.dtype not in _ITEMSIZE or tensor.requires_grad or tensor._base is not None
                or not tensor.is_contiguous() or Recycler.count(tensor) != Recycler._ONE_LOCAL
                or tensor._use_count() != 1 or torch._C._storage_Use_Count(tensor.untyped_storage()._cdata) != 2):
            return False
        self._spares[:] = [tensor]
        return True


if OWNERSHIP_CHECKS:
    Recycler._ONE_LOCAL = _refcount_of_one_local()


@contextmanager
def recycling() -> Iterator[Recycler]:
    """A block in which finished states given to the :class:`Recycler` are reused by the updates of
    this thread (a no-op recycler while the kernels are switched off)."""
    previous = getattr(_local, "spares", None)
    spares: list | None = [] if _switched_on else None
    _local.spares = spares
    try:
        yield Recycler(spares)
    finally:
        if spares is not None:
            spares.clear()
        _local.spares = previous
