"""Shared pieces of the benchmarks: timing, environment, results files, and loading the peers.

Nothing here is part of the diffode package; the benchmarks import it as a sibling module.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

from diffode.report import atomic_write, markdown_table  # noqa: E402

__all__ = ["RESULTS", "Counter", "environment", "load_diffusers", "load_kdiffusion_sampling", "markdown_table",
           "median_time", "set_threads", "write_results"]


def set_threads(n: int | None) -> int:
    """Pin torch's intra-op threads (None keeps torch's default); returns the count in use."""
    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def median_time(fn: Callable[[], object], repeat: int = 15, warmup: int = 2) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Counter:
    """Wraps a callable and counts its calls (NFE is counted at the model, never inferred from steps)."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> str:
    """One markdown line describing the machine and the library versions."""
    parts = [f"torch {torch.__version__}", f"{torch.get_num_threads()} thread(s)", f"CPU {_cpu_name()}",
             f"{os.cpu_count()} cores visible", f"Python {platform.python_version()}"]
    for name in ("diffusers", "k_diffusion"):
        try:
            from importlib.metadata import version

            parts.append(f"{name.replace('_', '-')} {version(name.replace('_', '-'))}")
        except Exception:
            parts.append(f"{name} not installed")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    return "; ".join(parts)


def write_results(name: str, markdown: str) -> str:
    """Write ``results/<name>.md`` atomically and return its path."""
    path = os.path.join(RESULTS, f"{name}.md")
    atomic_write(path, lambda tmp: open(tmp, "w").write(markdown.rstrip() + "\n"))
    return path


def report(sections: list[str], name: str, write: bool) -> str:
    """Join a benchmark's markdown sections, print them, and write ``results/<name>.md`` if ``write``."""
    text = "\n".join(sections)
    print(text)
    if write:
        print(f"wrote {write_results(name, text)}", file=sys.stderr)
    return text


def load_diffusers():
    """The diffusers module, or None when it is not installed."""
    try:
        return importlib.import_module("diffusers")
    except Exception as error:  # noqa: BLE001 - any import failure means "not available"
        print(f"diffusers not available ({type(error).__name__}: {error})", file=sys.stderr)
        return None


def load_kdiffusion_sampling():
    """``k_diffusion.sampling``, or None when k-diffusion is not installed.

    ``import k_diffusion`` imports every submodule of the package, and through them torchvision,
    kornia, clip, wandb and more; PyPI's torchvision does not import beside torch 2.13. The
    samplers need none of that: ``sampling.py`` imports only torch, scipy, torchdiffeq, torchsde,
    tqdm and one helper of ``k_diffusion.utils`` (``append_dims``). So when the plain import fails,
    this registers an empty ``k_diffusion`` package whose ``utils`` holds only that helper, and
    imports the unmodified ``sampling.py`` from the installed package under it.
    """
    try:
        return importlib.import_module("k_diffusion.sampling")
    except Exception:  # noqa: BLE001 - fall through to the minimal import
        pass
    for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        print("k-diffusion not available (pip install k-diffusion --no-deps torchsde)", file=sys.stderr)
        return None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        """Trailing singleton dimensions up to ``target_dims`` (what sampling.py needs from utils)."""
        extra = target_dims - x.ndim
        if extra < 0:
            raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
        return x[(...,) + (None,) * extra]

    utils.append_dims = append_dims
    package.utils = utils
    sys.modules["k_diffusion"] = package
    sys.modules["k_diffusion.utils"] = utils
    try:
        return importlib.import_module("k_diffusion.sampling")
    except Exception as error:  # noqa: BLE001
        print(f"k-diffusion's sampling module does not import ({type(error).__name__}: {error})", file=sys.stderr)
        return None
