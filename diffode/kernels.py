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
"""

from __future__ import annotations

import os
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

__all__ = ["PARALLEL_GRAIN", "available", "convert_and_combine", "cuda_available", "enabled", "linear_combination",
           "set_enabled", "use_kernels"]

#: PyTorch's grain for parallel elementwise operations (``at::internal::GRAIN_SIZE``): smaller
#: tensors run on one thread in eager PyTorch too, so the single-threaded kernel never loses there.
PARALLEL_GRAIN = 32768

ENV_VAR = "DIFFODE_KERNELS"
_ENV_VALUES = {"1": True, "on": True, "true": True, "yes": True, "0": False, "off": False, "false": False, "no": False}
_ITEMSIZE = {torch.float32: 4, torch.float64: 8}
_MAX_TENSORS = 8 if _combine is None else _combine.MAX_TERMS


def _from_environment() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value not in _ENV_VALUES:
        raise ValueError(f"{ENV_VAR} must be one of {sorted(_ENV_VALUES)} (1/on to use the fused CPU kernel, "
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
    if not _switched_on or len(terms) >= _MAX_TENSORS or isinstance(a, Tensor):
        return False
    if type(x) is not Tensor or x.dtype not in _ITEMSIZE:
        return False
    n = x.numel()
    if n == 0:
        return False
    if x.is_cpu:
        if _combine is None or not x.is_contiguous() or (n >= PARALLEL_GRAIN and torch.get_num_threads() != 1):
            return False
        contiguous = True
    elif x.is_cuda:
        if _jiterator is None:
            return False
        contiguous = False
    else:
        return False
    grad = torch.is_grad_enabled()
    if grad and x.requires_grad:
        return False
    shape, dtype, device = x.shape, x.dtype, x.device
    for tensor, c in terms:
        if (type(tensor) is not Tensor or isinstance(c, Tensor) or tensor.dtype != dtype or tensor.shape != shape
                or (grad and tensor.requires_grad) or tensor.device != device
                or (contiguous and not tensor.is_contiguous())):
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
        out = torch.empty_like(x)
        _combine.combine(out.data_ptr(), x.numel(), _ITEMSIZE[x.dtype],
                         (x.data_ptr(), *[t.data_ptr() for t, _ in live]), (float(a), *[c for _, c in live]))
        return out
    return _eager(x, a, terms)


def _eager(x: Tensor, a: float | Tensor, terms: Sequence[tuple[Tensor, float | Tensor]]) -> Tensor:
    out = torch.mul(x, a)
    for tensor, c in terms:
        if isinstance(c, Tensor):
            out.add_(tensor * c)
        else:
            out.add_(tensor, alpha=c)
    return out


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
    live = [(t, float(c)) for t, c in terms if c != 0.0]
    if len(live) + 3 > _MAX_TENSORS or not x.is_cpu or isinstance(weight, Tensor) or isinstance(cu, Tensor) \
            or isinstance(cw, Tensor) or not _fusable(x, a, [*live, (u, 1.0), (w, 1.0)]):
        return None
    inputs = [x] if u is x else [x, u]
    inputs += [w, *[t for t, _ in live]]
    coefficients = [float(a)] + ([] if u is x else [0.0]) + [0.0] + [c for _, c in live]
    conversion = [float(cu)] + ([] if u is x else [0.0]) + [float(cw)] + [0.0] * len(live)
    if u is not x:
        conversion[0], conversion[1] = 0.0, float(cu)
    out = torch.empty_like(x)
    _combine.combine(out.data_ptr(), x.numel(), _ITEMSIZE[x.dtype], tuple(t.data_ptr() for t in inputs),
                     tuple(coefficients), w.data_ptr(), tuple(conversion), float(weight))
    return out
