r"""Noise sources: where the Gaussian draws of the stochastic samplers come from.

A stochastic integrator (``integrator.stochastic``) asks its noise source for a standard normal
tensor shaped like the state, once per random term of a step. The sources:

* :meth:`NoiseSource.from_generator` (or ``generator=`` in :func:`~diffode.solve`): one
  ``torch.Generator`` draws the whole batch at once. Reproducible for a given batch; sample *i*'s
  draws depend on the rest of the batch.
* :meth:`NoiseSource.from_seeds` (or ``seeds=``): one generator per sample, seeded with that
  sample's seed. Sample *i*'s draws depend on its seed and the draw index only, so its result is
  the same bit for bit in any batch, of any size, at any position.
* :data:`zero_noise`: zeros, i.e. the sampler with its noise switched off.
* :class:`BrownianNoise`: increments of one Brownian path per sample, so that runs with different
  step counts see the same path (strong-convergence studies).

**Devices.** A generator draws on its own device (``torch.Generator()`` on the CPU,
``torch.Generator("cuda")`` on the GPU); the draw is then moved to the state's device and dtype.
CPU generators with a CUDA state cost one host-to-device copy per draw; seeded sources take
``device=`` to draw on the GPU instead. Draws are made in float64 for float64 states and in
float32 otherwise (so a float16 run sees the float32 run's noise, rounded).

**Intervals.** An integrator may pass the interval ``(u_s, u_t)`` of its Brownian clock that the draw
stands for (for Euler--Maruyama the times, for the exponential integrators a function of
$\lambda$; see each integrator). Sources of independent draws ignore it; :class:`BrownianNoise`
returns $(W(u_t) - W(u_s))/\sqrt{|u_t - u_s|}$.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffode._utils import check_int

__all__ = ["BrownianNoise", "NoiseSource", "noise_source", "zero_noise"]

Interval = tuple[float, float] | None


def _draw_dtype(like: Tensor) -> torch.dtype:
    return torch.float64 if like.dtype == torch.float64 else torch.float32


class NoiseSource:
    """A stream of standard normal draws shaped like the state (the base class draws from torch's global RNG).

    Subclasses override :meth:`normal`. A source is a stream: each call advances it, and a source
    passed to two solves continues in the second where the first stopped.
    """

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        """A standard normal tensor with the shape, dtype and device of ``like``.

        Args:
            like: The state the draw is for.
            interval: The interval of the integrator's Brownian clock the draw stands for (only
                :class:`BrownianNoise` uses it).
        """
        return torch.randn(like.shape, dtype=_draw_dtype(like), device=like.device).to(like.dtype)

    def __repr__(self) -> str:
        return "NoiseSource(global torch RNG)"

    @staticmethod
    def from_generator(generator: torch.Generator) -> NoiseSource:
        """Draws of the whole batch from one ``torch.Generator`` (on the generator's device)."""
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        return _GeneratorNoise(generator)

    @staticmethod
    def from_seeds(seeds: Sequence[int] | Tensor, device: torch.device | str = "cpu") -> NoiseSource:
        """One generator per sample: sample ``i``'s draws depend on ``seeds[i]`` and the draw index only.

        Args:
            seeds: One integer seed per sample (a sequence or a 1-D integer tensor); the batch of
                every state drawn for must have this length.
            device: Where the generators draw (``"cuda"`` to avoid a host-to-device copy per draw;
                the numbers differ from CPU draws).
        """
        return _SeededNoise(seeds, device)


class _GeneratorNoise(NoiseSource):
    def __init__(self, generator: torch.Generator):
        self.generator = generator

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        z = torch.randn(like.shape, generator=self.generator, dtype=_draw_dtype(like), device=self.generator.device)
        return z.to(device=like.device, dtype=like.dtype)

    def __repr__(self) -> str:
        return f"NoiseSource.from_generator(<{self.generator.device} generator>)"


class _SeededNoise(NoiseSource):
    def __init__(self, seeds: Sequence[int] | Tensor, device: torch.device | str):
        if isinstance(seeds, Tensor):
            if seeds.ndim != 1 or seeds.is_floating_point():
                raise ValueError(f"seeds must be a 1-D integer tensor, got {seeds.dtype} of shape {tuple(seeds.shape)}")
            seeds = seeds.tolist()
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
            raise TypeError(f"seeds must be a non-empty sequence of integers, one per sample, got {seeds!r}")
        self.seeds = [check_int(f"seeds[{i}]", s, low=0) for i, s in enumerate(seeds)]
        self.device = torch.device(device)
        self.generators = [torch.Generator(self.device).manual_seed(s) for s in self.seeds]

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        if like.shape[0] != len(self.generators):
            raise ValueError(f"{len(self.generators)} seeds for a batch of {like.shape[0]}: give one seed per sample")
        dtype = _draw_dtype(like)
        z = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=dtype, device=self.device)
                         for g in self.generators])
        return z.to(device=like.device, dtype=like.dtype)

    def __repr__(self) -> str:
        return f"NoiseSource.from_seeds({len(self.seeds)} seeds, device={str(self.device)!r})"


class _ZeroNoise(NoiseSource):
    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        return torch.zeros_like(like)

    def __repr__(self) -> str:
        return "zero_noise"


zero_noise: NoiseSource = _ZeroNoise()
"""A noise source of zeros: every stochastic sampler with its noise switched off."""


class BrownianNoise(NoiseSource):
    r"""One Brownian path $W(u)$ per sample, sampled where it is asked for (a Brownian bridge).

    :meth:`normal` returns $(W(u_t) - W(u_s))/\sqrt{|u_t - u_s|}$ for the interval it is given, a
    standard normal draw for one step. The path is kept at every point queried so far; a point
    between two known ones is drawn from the bridge between them, a point outside them extends the
    path. Runs of one integrator with nested grids therefore see the same path: the increments of a
    coarse step are the sums of the fine ones. Points are matched with a relative tolerance of
    ``1e-12`` (the same time reached through two grids differs in its last bits).

    It keeps one state-sized tensor per point: meant for studies, not for long production runs.

    Args:
        generator: Where the draws come from.
    """

    def __init__(self, generator: torch.Generator):
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        self.generator = generator
        self.clock: list[float] = []
        self.values: list[Tensor] = []

    def __repr__(self) -> str:
        return f"BrownianNoise({len(self.clock)} points)"

    def _randn(self, like: Tensor) -> Tensor:
        z = torch.randn(like.shape, generator=self.generator, dtype=torch.float64, device=self.generator.device)
        return z.to(like.device)

    def _find(self, u: float) -> int | None:
        i = bisect.bisect_left(self.clock, u)
        for j in (i - 1, i):
            if 0 <= j < len(self.clock) and abs(self.clock[j] - u) <= 1e-12 * max(abs(u), 1.0):
                return j
        return None

    def value(self, u: float, like: Tensor) -> Tensor:
        """$W(u)$ (float64), drawn from the bridge or an extension of the path if ``u`` is new."""
        u = float(u)
        if not math.isfinite(u):
            raise ValueError(f"a Brownian clock value must be finite, got {u}")
        found = self._find(u)
        if found is not None:
            return self.values[found]
        if not self.clock:
            w = torch.zeros(like.shape, dtype=torch.float64, device=like.device)
        else:
            i = bisect.bisect_left(self.clock, u)
            z = self._randn(like)
            if i == 0:
                w = self.values[0] + math.sqrt(self.clock[0] - u) * z
            elif i == len(self.clock):
                w = self.values[-1] + math.sqrt(u - self.clock[-1]) * z
            else:
                (u0, w0), (u1, w1) = (self.clock[i - 1], self.values[i - 1]), (self.clock[i], self.values[i])
                a = (u - u0) / (u1 - u0)
                w = w0 + a * (w1 - w0) + math.sqrt(a * (u1 - u)) * z
        i = bisect.bisect_left(self.clock, u)
        self.clock.insert(i, u)
        self.values.insert(i, w)
        return w

    def normal(self, like: Tensor, interval: Interval = None) -> Tensor:
        if interval is None:
            raise ValueError("BrownianNoise needs the interval of each draw; this integrator's draws are not "
                             "Brownian increments (e.g. a Langevin corrector's)")
        u_s, u_t = float(interval[0]), float(interval[1])
        if u_s == u_t:
            return torch.zeros_like(like)
        dw = self.value(u_t, like) - self.value(u_s, like)
        return (dw / math.sqrt(abs(u_t - u_s))).to(like.dtype)


def noise_source(noise: NoiseSource | None = None, generator: torch.Generator | None = None,
                 seeds: Sequence[int] | Tensor | None = None) -> NoiseSource:
    """The one place a solve's noise source is built from its ``noise``/``generator``/``seeds`` arguments.

    At most one may be given; with none, draws come from torch's global RNG (seed it with
    ``torch.manual_seed`` for reproducible runs, or better pass ``seeds``).
    """
    given = [name for name, v in (("noise", noise), ("generator", generator), ("seeds", seeds)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"pass at most one of noise, generator and seeds, got {' and '.join(given)}")
    if noise is not None:
        if not isinstance(noise, NoiseSource):
            raise TypeError(f"noise must be a diffode.noise.NoiseSource, got {type(noise).__name__}")
        return noise
    if generator is not None:
        return NoiseSource.from_generator(generator)
    if seeds is not None:
        return NoiseSource.from_seeds(seeds)
    return NoiseSource()
