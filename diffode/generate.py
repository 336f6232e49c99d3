r"""Many samples: split across processes, reproducible per sample, written in shards that survive faults.

```python
from diffode.generate import generate

generate(model, "dpmpp_2m", num_samples=50_000, shape=(3, 32, 32), out_dir="samples", nfe=20, seed=0)
```

**Reproducible per sample.** Sample *i*'s initial noise (and, for a stochastic sampler, its noise
along the way) derives from ``(seed, i)`` only (:func:`sample_seed`), so sample *i* is the same
whatever the number of processes. Its batch is the same too: the range of samples is cut into
shards of ``shard_size`` and each shard into batches of ``batch_size`` from its start, whichever
process takes it; so the output is bit-identical for any number of processes. Other batch sizes
change nothing for element-wise models (the analytic mixture) and change a network's results at the
level of float round-off (its kernels may pick other algorithms for other batch sizes).

**Sharded, atomic, resumable.** The output folder holds ``config.json`` (the sampling configuration,
written first), one ``shard-NNNNN.npz`` per shard (``samples`` and ``indices``), each written under a
temporary name and renamed when complete, with a sidecar ``shard-NNNNN.json`` carrying its SHA-256,
and ``manifest.json`` (the configuration, every shard's range and checksum) once all shards exist.
Running the same command again skips every shard whose file matches its checksum and redoes the
missing or damaged ones; a different configuration in an existing folder is refused, never mixed in.

**Processes.** Under ``torchrun`` (``torch.distributed`` initialised, or the ``RANK``/``WORLD_SIZE``
variables set: gloo on the CPU, NCCL on CUDA) process *r* of *W* takes shards *r, r + W, ...*;
process 0 shows the progress bar and writes the manifest after a barrier.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from diffode._utils import check_int
from diffode.integrators.base import Integrator
from diffode.integrators.registry import get_integrator
from diffode.models.predictor import Predictor
from diffode.report import atomic_write
from diffode.study import sample_nfe

__all__ = ["GenerateConfig", "GenerateReport", "generate", "load_samples", "sample_seed", "shard_ranges", "verify"]

CONFIG, MANIFEST = "config.json", "manifest.json"


def sample_seed(seed: int, index: int, stream: str = "prior") -> int:
    """The seed of sample ``index`` of a run seeded with ``seed`` (a 63-bit integer).

    A hash of ``(seed, index, stream)``: independent of the number of processes, the batch and the
    order of work; ``stream`` separates the initial noise (``"prior"``) from a stochastic sampler's
    noise along the way (``"path"``).
    """
    digest = hashlib.blake2b(f"diffode:{seed}:{index}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def shard_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` sample ranges of the shards, in order."""
    return [(start, min(start + shard_size, num_samples)) for start in range(0, num_samples, shard_size)]


@dataclass(frozen=True)
class GenerateConfig:
    """Everything that determines the samples; a folder holds the output of one configuration."""

    model: str
    integrator: str
    num_samples: int
    shape: tuple[int, ...]
    nfe: int
    grid: str
    seed: int
    shard_size: int
    batch_size: int
    dtype: str

    def as_json(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


@dataclass
class GenerateReport:
    """What a :func:`generate` call did.

    Attributes:
        out_dir: The output folder.
        shards_done: Shards this process sampled (missing or damaged before).
        shards_skipped: Shards this process found complete and verified.
        samples: Samples this process drew.
        seconds: Wall time of this process.
    """

    out_dir: str
    shards_done: list[int]
    shards_skipped: list[int]
    samples: int
    seconds: float

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else math.nan


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shard_paths(out_dir: str, k: int) -> tuple[str, str]:
    return os.path.join(out_dir, f"shard-{k:05d}.npz"), os.path.join(out_dir, f"shard-{k:05d}.json")


def _shard_complete(out_dir: str, k: int, start: int, stop: int) -> bool:
    data, sidecar = _shard_paths(out_dir, k)
    if not (os.path.exists(data) and os.path.exists(sidecar)):
        return False
    try:
        with open(sidecar, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("start") == start and meta.get("stop") == stop and meta.get("sha256") == _sha256(data)


def verify(out_dir: str) -> list[int]:
    """The indices of the shards of ``out_dir`` that are missing or do not match their checksum."""
    config = _read_config(out_dir)
    if config is None:
        raise ValueError(f"{out_dir} holds no {CONFIG}: not a diffode output folder")
    ranges = shard_ranges(config["num_samples"], config["shard_size"])
    return [k for k, (a, b) in enumerate(ranges) if not _shard_complete(out_dir, k, a, b)]


def _read_config(out_dir: str) -> dict | None:
    path = os.path.join(out_dir, CONFIG)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _write_json(path: str, value: dict) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)

    atomic_write(path, write)


def _distributed() -> tuple[int, int, bool]:
    """``(rank, world_size, initialised_here)``: joins the process group ``torchrun`` describes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _prior(model: Predictor, shape: Sequence[int], indices: range, seed: int, dtype: torch.dtype,
           device: torch.device | str | None) -> Tensor:
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(sample_seed(seed, i)),
                        dtype=torch.float64) for i in indices]
    return (torch.stack(rows) * model.schedule.prior_std()).to(device=device, dtype=dtype)


def _sample_shard(model: Predictor, integrator: Integrator, config: GenerateConfig, start: int, stop: int,
                  dtype: torch.dtype, device, on_batch: Callable[[int], None]) -> np.ndarray:
    out = []
    for a in range(start, stop, config.batch_size):
        indices = range(a, min(a + config.batch_size, stop))
        x = _prior(model, config.shape, indices, config.seed, dtype, device)
        options = {}
        if integrator.stochastic:
            options["seeds"] = [sample_seed(config.seed, i, "path") for i in indices]
        solution = sample_nfe(model, x, integrator, config.nfe, grid=config.grid, **options)
        out.append(solution.x.detach().to("cpu").numpy())
        on_batch(len(indices))
    return np.concatenate(out)


def generate(model: Predictor, integrator: Integrator | str, *, num_samples: int, shape: Sequence[int], out_dir: str,
             nfe: int = 20, grid: str = "logSNR", seed: int = 0, shard_size: int = 1000, batch_size: int = 64,
             dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, model_name: str = "",
             progress: bool = True) -> GenerateReport:
    """Draw ``num_samples`` samples into ``out_dir`` in shards (see the module docstring).

    Args:
        model: The :class:`~diffode.models.Predictor`.
        integrator: An integrator, a registered name or ``package.module:name``.
        num_samples: How many samples.
        shape: The shape of one sample.
        out_dir: The output folder (created if missing).
        nfe: The budget of model evaluations per sample (adaptive integrators ignore it).
        grid: The time grid's name.
        seed: The run's seed; sample ``i`` uses :func:`sample_seed` of it.
        shard_size: Samples per shard file.
        batch_size: Samples per model call.
        dtype: The dtype of the samples (and of the state).
        device: Where to sample (default: the CPU; under ``torchrun`` with CUDA, the process's GPU).
        model_name: The model's name for the configuration (a rerun with another name is refused).
        progress: Show a progress bar on process 0 (samples per second and time left).

    Returns:
        A :class:`GenerateReport` of this process's work.

    Raises:
        ValueError: For bad arguments, or when ``out_dir`` holds another configuration's output.
    """
    from tqdm.auto import tqdm

    num_samples = check_int("num_samples", num_samples, low=1)
    shard_size = check_int("shard_size", shard_size, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    nfe = check_int("nfe", nfe, low=1)
    seed = check_int("seed", seed, low=0)
    shape = tuple(check_int("shape", s, low=1) for s in shape)
    integrator = get_integrator(integrator)
    config = GenerateConfig(model_name, repr(integrator), num_samples, shape, nfe, str(grid), seed, shard_size,
                            batch_size, str(dtype).removeprefix("torch."))
    rank, world, joined = _distributed()
    if device is None and world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", rank % torch.cuda.device_count())
    try:
        os.makedirs(out_dir, exist_ok=True)
        existing = _read_config(out_dir)
        if existing is not None and existing != config.as_json():
            differ = sorted(k for k in config.as_json() if existing.get(k) != config.as_json()[k])
            raise ValueError(f"{out_dir} holds samples of another configuration (differs in: {', '.join(differ)}); "
                             "use a new folder, or the same arguments to resume")
        _barrier(world)
        if rank == 0:
            if existing is None:
                _write_json(os.path.join(out_dir, CONFIG), config.as_json())
            for name in os.listdir(out_dir):  # half-written files of a run that was killed
                if name.startswith(".diffode-"):
                    os.unlink(os.path.join(out_dir, name))
        _barrier(world)
        ranges = shard_ranges(num_samples, shard_size)
        mine = [k for k in range(len(ranges)) if k % world == rank]
        done, skipped, drawn = [], [], 0
        start_time = time.perf_counter()
        todo = [k for k in mine if not _shard_complete(out_dir, k, *ranges[k])]
        skipped = [k for k in mine if k not in todo]
        total = sum(ranges[k][1] - ranges[k][0] for k in todo)
        bar = tqdm(total=total * world, unit="sample", desc="sampling", disable=not progress or rank != 0,
                   dynamic_ncols=True)
        for k in todo:
            a, b = ranges[k]
            samples = _sample_shard(model, integrator, config, a, b, dtype, device, lambda n: bar.update(n * world))
            data, sidecar = _shard_paths(out_dir, k)
            atomic_write(data, lambda tmp: np.savez(tmp, samples=samples, indices=np.arange(a, b)))
            _write_json(sidecar, {"start": a, "stop": b, "sha256": _sha256(data)})
            done.append(k)
            drawn += b - a
        bar.close()
        _barrier(world)
        if rank == 0:
            shards = []
            for k, (a, b) in enumerate(ranges):
                data, sidecar = _shard_paths(out_dir, k)
                with open(sidecar, encoding="utf-8") as f:
                    shards.append({"file": os.path.basename(data), **json.load(f)})
            _write_json(os.path.join(out_dir, MANIFEST), {"config": config.as_json(), "shards": shards})
        return GenerateReport(out_dir, done, skipped, drawn, time.perf_counter() - start_time)
    finally:
        if joined:
            import torch.distributed as dist

            dist.destroy_process_group()


def load_samples(out_dir: str) -> np.ndarray:
    """All samples of a complete output folder, in order (after checking every shard's checksum)."""
    bad = verify(out_dir)
    if bad:
        raise ValueError(f"{out_dir} is incomplete or damaged: shards {bad[:10]} missing or not matching their "
                         "checksums; run the same command again to finish them")
    config = _read_config(out_dir)
    parts = []
    for k, _ in enumerate(shard_ranges(config["num_samples"], config["shard_size"])):
        with np.load(_shard_paths(out_dir, k)[0]) as f:
            parts.append(f["samples"])
    return np.concatenate(parts)
