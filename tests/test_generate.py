"""Many samples: per-sample reproducibility, any number of processes, atomic shards, resuming."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from diffode.generate import generate, load_samples, sample_seed, shard_ranges, verify
from diffode.models.builtin import load_model

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(num_samples=11, shape=(3, 8, 8), nfe=6, seed=3, shard_size=4, batch_size=3, model_name="mixture",
           progress=False)


def mixture():
    return load_model("mixture")[1]


def test_sample_seeds_are_per_sample_and_per_stream():
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(0, 6)
    assert sample_seed(0, 5) != sample_seed(1, 5) and sample_seed(0, 5, "path") != sample_seed(0, 5)
    assert shard_ranges(11, 4) == [(0, 4), (4, 8), (8, 11)]


def test_output_is_per_sample_whatever_the_batch_and_shard(tmp_path):
    report = generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path / "a"), **RUN)
    assert report.shards_done == [0, 1, 2] and report.samples == 11
    a = load_samples(str(tmp_path / "a"))
    other = {**RUN, "batch_size": 5, "shard_size": 11}
    b = load_samples(generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path / "b"), **other).out_dir)
    assert a.shape == (11, 3, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert [s["start"] for s in manifest["shards"]] == [0, 4, 8] and manifest["config"]["nfe"] == 6


def test_a_conflicting_configuration_is_refused(tmp_path):
    generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path), **RUN)
    with pytest.raises(ValueError, match="another configuration .*differs in: integrator"):
        generate(mixture(), "dpmpp_3m", out_dir=str(tmp_path), **RUN)


def test_a_rerun_skips_finished_shards_and_redoes_damaged_ones(tmp_path):
    generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path), **RUN)
    reference = load_samples(str(tmp_path))
    shard = tmp_path / "shard-00001.npz"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert verify(str(tmp_path)) == [1]
    with pytest.raises(ValueError, match="damaged"):
        load_samples(str(tmp_path))
    report = generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path), **RUN)
    assert report.shards_done == [1] and report.shards_skipped == [0, 2]
    np.testing.assert_array_equal(load_samples(str(tmp_path)), reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    generate(mixture(), "dpmpp_2m", out_dir=out_dir, **RUN)


@pytest.mark.slow
def test_two_processes_give_the_same_bits_as_one(tmp_path):
    generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path / "one"), **RUN)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    np.testing.assert_array_equal(load_samples(str(tmp_path / "one")), load_samples(str(tmp_path / "two")))
    assert (tmp_path / "two" / "manifest.json").exists()


SLOW_RUN = """
import sys, time, torch
from diffode.generate import generate
from diffode.models.builtin import load_model
torch.set_num_threads(1)
model = load_model("mixture")[1]
predict = model.predict
def slow(x, point, kind):
    time.sleep(0.05)
    return predict(x, point, kind)
model.predict = slow
generate(model, "dpmpp_2m", out_dir=sys.argv[1], num_samples=12, shape=(3, 8, 8), nfe=6, seed=3, shard_size=3,
         batch_size=3, model_name="mixture", progress=False)
"""


@pytest.mark.slow
def test_kill_9_in_the_middle_then_rerun_equals_an_uninterrupted_run(tmp_path):
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-c", SLOW_RUN, str(killed)], env=env)
    deadline = time.time() + 120
    while not (killed / "shard-00000.json").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 0 < len(verify(str(killed))) < 4  # some shards finished, some not
    assert not (killed / "manifest.json").exists()
    subprocess.run([sys.executable, "-c", SLOW_RUN, str(killed)], env=env, check=True)
    subprocess.run([sys.executable, "-c", SLOW_RUN, str(whole)], env=env, check=True)
    np.testing.assert_array_equal(load_samples(str(killed)), load_samples(str(whole)))
    for k in range(4):
        name = f"shard-{k:05d}.npz"
        assert (killed / name).read_bytes() == (whole / name).read_bytes()
    assert not [p for p in killed.iterdir() if p.name.startswith(".diffode-")]  # no temporary left behind


def test_a_stochastic_sampler_is_per_sample_too(tmp_path):
    # Its noise along the way comes from each sample's own seed: other batches, same bits.
    run = {**RUN, "num_samples": 5}
    a = load_samples(generate(mixture(), "sde_dpmpp_2m", out_dir=str(tmp_path / "a"), **run).out_dir)
    b = load_samples(generate(mixture(), "sde_dpmpp_2m", out_dir=str(tmp_path / "b"),
                              **{**run, "batch_size": 2, "shard_size": 5}).out_dir)
    np.testing.assert_array_equal(a, b)
    ode = load_samples(generate(mixture(), "dpmpp_2m", out_dir=str(tmp_path / "c"), **run).out_dir)
    assert np.abs(a - ode).max() > 1e-3  # the noise is really there


def test_the_example_script_samples_and_resumes(tmp_path):
    script = [sys.executable, str(ROOT / "examples" / "sample_at_scale.py"), "--model", "mixture", "--num-samples", "4",
              "--nfe", "4", "--batch-size", "2", "--shard-size", "2", "--out-dir", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(script, env=env, capture_output=True, text=True, check=True)
    assert "4 samples in" in first.stdout and verify(str(tmp_path)) == []
    again = subprocess.run(script, env=env, capture_output=True, text=True, check=True)
    assert "0 samples in" in again.stdout and "2 shards were already complete" in again.stdout
