r"""Fast fixed-plan sampling: the loop of :func:`~diffode.solve` compiled whole, or captured as one CUDA graph.

A :class:`PlanSampler` is built once for a model, an integrator, a :class:`~diffode.integrators.Plan`
and a batch shape, and then called on batch after batch:

* ``mode="eager"`` runs :func:`~diffode.solve`'s loop as it is (the baseline);
* ``mode="compile"`` hands the whole loop, every step and every model evaluation, to
  ``torch.compile(fullgraph=True)``: one graph, no graph break (a break is an error, not a slow path);
* ``mode="cuda_graph"`` records the loop once as a CUDA graph and replays it: one launch per batch.

Both work because the fixed-grid loop issues tensor operations only: every time point and every step
coefficient is a float64 Python number computed on the host (the functions that compute them are
marked with ``torch.compiler.assume_constant_result``, so the compiler folds them to constants), the
loop never reads a tensor back, and a stochastic integrator's draws are made outside the compiled or
captured region (from the same :class:`~diffode.noise.NoiseSource`, in the same order, at the same
intervals as :func:`~diffode.solve` makes them) and passed in as inputs. So the samples equal those
of :func:`~diffode.solve` with the same plan and noise, to float round-off (the compiler fuses
operations in another order).

What :func:`~diffode.solve` checks per step becomes, here:

* **NFE**: the sampler runs the plan once at construction (the warm-up, which also fills the host
  caches) and counts its evaluations: :attr:`PlanSampler.nfe` equals ``plan.nfe``.
* **Shapes and devices** of the model's outputs: checked while the loop is traced or recorded
  (metadata only, no synchronisation); the batch's shape, dtype and device are fixed.
* **Finiteness**: ``check_finite=True`` checks the result once, after the run (one synchronisation),
  and names the samples that are not finite; to find the step, run :func:`~diffode.solve` with
  ``check_finite=True`` on those samples.

**Memory.** The sampler never writes into a tensor it did not allocate. A CUDA graph reads its input
from a static buffer of its own: each call copies ``x`` (and the draws) into it, replays, and returns
a **clone** of the graph's output buffer, so a result stays valid after the next call.

**Precision.** As in :func:`~diffode.solve`: a float16/bfloat16 batch is integrated in float32 with
the network run in the batch's dtype. To run a half-precision network on a float32 state, wrap it
with ``diffode.models.wrap(..., network_dtype=torch.bfloat16)``: the state casts to the network's
dtype at its input and the output back, in that one place.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from diffode._utils import NonFiniteError, check_choice, check_tensor, nonfinite_samples
from diffode.integrators.base import Integrator, Plan
from diffode.integrators.registry import get_integrator
from diffode.models.predictor import Predictor
from diffode.noise import Interval, NoiseSource, noise_source
from diffode.solve import (
    _check_callable,
    _check_model,
    _Evaluator,
    _grid_points,
    run_points,
    working_dtype,
)

__all__ = ["MODES", "PlanSampler"]

MODES = ("eager", "compile", "cuda_graph")
"""The ways a :class:`PlanSampler` runs its loop."""

# torch.compile modes that record CUDA graphs of their own and reuse their output buffers.
_REUSING_COMPILE_MODES = ("reduce-overhead", "max-autotune")


class _Recorder(NoiseSource):
    """Zeros for the warm-up run, recording what each draw is for: its shape, dtype and interval."""

    def __init__(self):
        self.draws: list[tuple[torch.Size, torch.dtype, Interval]] = []

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        self.draws.append((like.shape, like.dtype, interval))
        return torch.zeros_like(like)


class _Given(NoiseSource):
    """The draws of one run, made beforehand, handed out in order (inside the compiled or captured loop)."""

    def __init__(self, draws: Sequence[Tensor]):
        self.draws = draws
        self.index = 0

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        if self.index >= len(self.draws):  # a host integer: no synchronisation
            raise RuntimeError("the integrator asked for more draws than in the warm-up run; its draws must be "
                               "fixed by the plan (not by the state) to run in a PlanSampler")
        draw = self.draws[self.index]
        self.index += 1
        return draw


def _own_code(function: Callable) -> Callable:
    """A copy of ``function`` with a code object of its own.

    torch.compile keeps its compiled graphs, and its limit on recompilations (8 by default), per code
    object: were every sampler to compile the one ``_loop``, the ninth sampler of a process would
    find that limit reached. A fresh code object gives each sampler its own cache.
    """
    return types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)


class PlanSampler:
    """Samples batches of one shape through one plan, eagerly, compiled or as a CUDA graph.

    Construction runs the plan once on ``example`` (eagerly, the warm-up); ``mode="compile"`` compiles
    on the first call, ``mode="cuda_graph"`` records the graph at construction.

    Args:
        model: The :class:`~diffode.models.Predictor`.
        integrator: A fixed-grid :class:`~diffode.integrators.Integrator` or a registered name
            (deterministic or stochastic).
        plan: The :class:`~diffode.integrators.Plan` (``integrator.plan(schedule, nfe, ...)``).
        example: A batch of the shape, dtype and device of every batch to come (its values serve
            the warm-up only).
        mode: ``"eager"``, ``"compile"`` or ``"cuda_graph"`` (CUDA batches only).
        correcting_xt_fn: As in :func:`~diffode.solve`: ``fn(x, t, step)`` after each step; it is
            compiled or recorded with the loop, so it must not synchronise either.
        compile_options: Keyword arguments for ``torch.compile`` with ``mode="compile"`` (e.g.
            ``{"mode": "max-autotune-no-cudagraphs"}`` or ``{"backend": "aot_eager"}``);
            ``fullgraph=True`` and ``dynamic=False`` are always set.

    Attributes:
        nfe: The model evaluations per batch, counted in the warm-up (``plan.nfe``).
        times: The plan's times.
        mode: The mode.

    Raises:
        TypeError: For arguments of the wrong type.
        ValueError: For an adaptive integrator, an unknown mode, ``"cuda_graph"`` without a CUDA
            ``example``, or ``compile_options`` that set ``fullgraph`` or ``dynamic``.
    """

    def __init__(self, model: Predictor, integrator: Integrator | str, plan: Plan, example: Tensor, *,
                 mode: str = "compile", correcting_xt_fn: Callable | None = None,
                 compile_options: Mapping | None = None):
        _check_model(model)
        example = check_tensor("example", example)
        integrator = get_integrator(integrator)
        if integrator.adaptive:
            raise ValueError(f"{integrator!r} chooses its own steps (an embedded pair) and needs the error on the "
                             "host every step; a PlanSampler runs fixed plans only (use diffode.solve_adaptive)")
        if not isinstance(plan, Plan):
            raise TypeError(f"plan must be a diffode Plan (integrator.plan(schedule, nfe, ...)), got {type(plan).__name__}")
        self.mode = check_choice("mode", mode, MODES)
        _check_callable("correcting_xt_fn", correcting_xt_fn)
        if compile_options is not None and not isinstance(compile_options, Mapping):
            raise TypeError(f"compile_options must be a dict of torch.compile arguments, got {type(compile_options).__name__}")
        options = dict(compile_options or {})
        fixed = sorted({"fullgraph", "dynamic"} & set(options))
        if fixed:
            raise ValueError(f"compile_options may not set {', '.join(fixed)}: a PlanSampler compiles one full graph "
                             "for one batch shape")
        if options and self.mode != "compile":
            raise ValueError(f"compile_options apply to mode='compile' only, got mode={self.mode!r}")
        if self.mode == "cuda_graph" and example.device.type != "cuda":
            raise ValueError(f"mode='cuda_graph' needs a CUDA batch, got example on {example.device}; use "
                             "mode='compile' or 'eager' elsewhere")
        self.model, self.integrator, self.plan = model, integrator, plan
        self.points = _grid_points(model.schedule, plan.times)
        self.times = plan.times
        self.correcting_xt_fn = correcting_xt_fn
        self._shape, self._dtype, self._device = example.shape, example.dtype, example.device
        work = working_dtype(example.dtype)
        self._network_dtype = example.dtype if work != example.dtype else None

        recorder = _Recorder()
        warm = self._solution(example, recorder)
        self.nfe = warm.nfe
        self._draws = recorder.draws if integrator.stochastic else []
        if self.nfe != plan.nfe:
            raise ValueError(f"{integrator!r} spent {self.nfe} evaluations on a plan of {plan.nfe}: the plan was "
                             "made by another integrator")

        self._clone = self.mode == "cuda_graph" or options.get("mode") in _REUSING_COMPILE_MODES
        if self.mode == "compile":
            self._run = torch.compile(types.MethodType(_own_code(PlanSampler._loop), self), fullgraph=True,
                                      dynamic=False, **options)
        elif self.mode == "cuda_graph":
            self._run = self._capture(example)
        else:
            self._run = self._loop

    def _solution(self, x: Tensor, noise: NoiseSource):
        evaluator = _Evaluator(self.model, self._network_dtype, False)
        noise_kw = {"noise": noise} if self.integrator.stochastic else {}
        plan = self.plan
        return run_points(evaluator, x, self.integrator, self.points, plan.orders, plan.denoise_to_zero, noise_kw,
                          self.correcting_xt_fn, False)

    def _loop(self, x: Tensor, draws: list[Tensor]) -> Tensor:
        """The whole plan on ``x`` with the given draws: what is compiled or recorded."""
        return self._solution(x, _Given(draws)).x

    def _capture(self, example: Tensor) -> Callable[[Tensor, list[Tensor]], Tensor]:
        """Record the loop as one CUDA graph over static buffers of our own; return its replay."""
        static_x = example.detach().clone()
        static_draws = [torch.zeros(shape, dtype=dtype, device=example.device) for shape, dtype, _ in self._draws]
        # Warm up on a side stream before capture, as torch.cuda.graph requires (lazy initialisation,
        # cuBLAS workspaces, autotuning happen here and not inside the graph).
        side = torch.cuda.Stream(device=example.device)
        side.wait_stream(torch.cuda.current_stream(example.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._loop(static_x, static_draws)
        torch.cuda.current_stream(example.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._loop(static_x, static_draws)

        def replay(x: Tensor, draws: list[Tensor]) -> Tensor:
            static_x.copy_(x)
            for buffer, draw in zip(static_draws, draws):
                buffer.copy_(draw)
            graph.replay()
            return static_out

        self._graph = graph  # keep the graph (and its memory pool) alive with the sampler
        return replay

    def draw(self, noise: NoiseSource) -> list[Tensor]:
        """The draws of one run from ``noise``: as many, as shaped and at the same intervals as
        :func:`~diffode.solve` would ask for (none for a deterministic integrator)."""
        return [noise.normal(torch.empty(shape, dtype=dtype, device=self._device), interval)
                for shape, dtype, interval in self._draws]

    def __call__(self, x: Tensor, *, noise: NoiseSource | None = None, generator: torch.Generator | None = None,
                 seeds: Sequence[int] | Tensor | None = None, check_finite: bool = False) -> Tensor:
        """Sample one batch: the plan run from ``x``.

        Args:
            x: The batch, of the example's shape, dtype and device; it is not modified.
            noise: For a stochastic integrator, the :class:`~diffode.noise.NoiseSource` (as in
                :func:`~diffode.solve`).
            generator: Or a ``torch.Generator``.
            seeds: Or one integer seed per sample. With none of the three, torch's global RNG.
            check_finite: Check the result once, after the run, and raise
                :class:`~diffode.NonFiniteError` naming the samples that are not finite.

        Returns:
            A new tensor of the shape and dtype of ``x`` (never a buffer the next call overwrites).
        """
        x = check_tensor("x", x)
        if x.shape != self._shape or x.dtype != self._dtype or x.device != self._device:
            raise ValueError(f"this PlanSampler samples batches of shape {tuple(self._shape)}, {self._dtype} on "
                             f"{self._device}; got {tuple(x.shape)}, {x.dtype} on {x.device}: build a sampler for "
                             "that batch")
        source = noise_source(noise, generator, seeds)
        out = self._run(x, self.draw(source))
        if self._clone:
            out = out.clone()
        if check_finite:
            bad = nonfinite_samples(out)
            if bad:
                raise NonFiniteError(len(self.plan.orders), self.points[-1].t, bad, "result",
                                     "run diffode.solve(..., check_finite=True) on these samples to find the step")
        return out

    def __repr__(self) -> str:
        return (f"PlanSampler({self.integrator!r}, nfe={self.nfe}, batch={tuple(self._shape)}, {self._dtype}, "
                f"mode={self.mode!r})")
