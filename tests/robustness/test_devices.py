"""Devices without a GPU: no host-device synchronisation in the fixed-grid loop, no hard-coded device.

Two independent proofs that the fixed-grid loop never reads the state back to the host:

* It runs on the ``meta`` device, whose tensors have no data: any read (``item``, ``tolist``,
  ``bool``, ``float``, ``cpu``) raises, and so does mixing a non-scalar CPU tensor into the
  computation (a tensor created without ``device=``).
* On the CPU, with the state in float32, every host read of a tensor that is not float64 is counted
  from the first model evaluation to the end of the ``sample`` call (before it come the argument
  checks, which read host data freely). The schedule's host arithmetic inside the loop
  (``point_at_lambda`` for singlestep stages) runs on float64 CPU tensors; the state, the model
  outputs and any flags derived from them do not, which is what tells the two apart.

Both fail where they should: ``check_finite=True`` reads once per step (and is counted exactly), and
the adaptive loop reads its error once per step. ``test_cuda.py`` repeats the check on a GPU with
``torch.cuda.set_sync_debug_mode("error")``.
"""

import contextlib

import pytest
import torch

import diffode as dd
from tests.helpers import mixture2
from tests.robustness.common import ALGORITHMS, FIXED_METHODS, SKIP_TYPES, schedule

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu", "__array__")


class CountFromFirstEvaluation(dd.Predictor):
    """Passes through to ``inner``; switches the read counter on at its first evaluation."""

    def __init__(self, inner, state):
        self.inner, self.schedule, self.state = inner, inner.schedule, state

    def predict(self, x, point, kind):
        self.state["on"] = True
        return self.inner.predict(x, point, kind)

    def predict_mixed(self, x, point, kind, network_dtype):
        self.state["on"] = True
        return self.inner.predict_mixed(x, point, kind, network_dtype)


@contextlib.contextmanager
def counted_host_reads(monkeypatch, model):
    """Yield ``(model, reads)``: a wrapped ``model`` and the list of host reads of tensors that are
    not float64 CPU tensors made since that model's first evaluation."""
    state, reads = {"on": False}, []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def patched(self, *args, _original=original, _name=name, **kwargs):
            if state["on"] and (self.dtype != torch.float64 or self.device.type != "cpu"):
                reads.append((_name, self.dtype, tuple(self.shape)))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, patched)
    try:
        yield CountFromFirstEvaluation(model, state), reads
    finally:
        monkeypatch.undo()


def models(schedule_name):
    s = schedule(schedule_name)
    gm = mixture2()
    return {"analytic": gm.predictor(s),
            "wrapped-v": dd.wrap(gm.network(s, "v"), s, parameterization="v", time_input="continuous"),
            "cfg": dd.wrap(lambda x, t, c: gm.network(s, "noise")(x, t) + c.to(x.dtype), s, guidance="classifier-free",
                           condition=torch.full((3, 1), 0.02), unconditional_condition=torch.zeros(3, 1), scale=2.0,
                           time_input="continuous")}


@pytest.mark.parametrize("schedule_name", ["discrete", "linear", "cosine"])
def test_fixed_grid_loop_runs_on_the_meta_device(schedule_name):
    """Every method, order and algorithm on the discrete schedule (every grid for one algorithm);
    the others with a network, at order 3 (meta kernels are slow to dispatch)."""
    model_names = ["analytic", "wrapped-v"] if schedule_name == "discrete" else ["wrapped-v"]
    for name in model_names:
        model = models(schedule_name)[name]
        x = torch.empty(3, 4, device="meta")
        for algorithm in ALGORITHMS if name == "analytic" else ALGORITHMS[:1]:
            solver = dd.DPMSolver(model, algorithm=algorithm)
            for method in FIXED_METHODS:
                for order in (1, 2, 3) if name == "analytic" else (3,):
                    every_grid = (name, algorithm, order) == ("analytic", "dpmsolver++", 3)
                    for skip_type in SKIP_TYPES if every_grid else ["logSNR"]:
                        out = solver.sample(x, steps=5, order=order, method=method, skip_type=skip_type,
                                            denoise_to_zero=True)
                        assert out.device.type == "meta" and out.shape == x.shape and out.dtype == x.dtype


def test_meta_device_catches_reads_and_stray_cpu_tensors():
    """The meta proof can fail: reading the state, or mixing in a CPU tensor, raises there."""
    model = mixture2().predictor(schedule("linear"))
    x = torch.empty(3, 4, device="meta")
    with pytest.raises((RuntimeError, NotImplementedError)):
        dd.DPMSolver(model, check_finite=True).sample(x, steps=3)
    with pytest.raises((RuntimeError, NotImplementedError)):
        dd.DPMSolver(model).sample(x, method="adaptive", order=2)
    with pytest.raises(RuntimeError, match="device"):
        dd.DPMSolver(model, correcting_xt_fn=lambda x, t, i: x + torch.zeros(4)).sample(x, steps=3)


@pytest.mark.parametrize("schedule_name", ["discrete", "cosine"])
def test_fixed_grid_loop_reads_nothing_back_on_the_cpu(schedule_name, monkeypatch):
    x = torch.randn(3, 4)
    cases = 0
    for name, model in models(schedule_name).items():
        for algorithm in ALGORITHMS:
            for method in FIXED_METHODS:
                for dtype in (torch.float32, torch.float16):
                    for order in (1, 2, 3):
                        with counted_host_reads(monkeypatch, model) as (counted, reads):
                            out = dd.DPMSolver(counted, algorithm=algorithm).sample(
                                x.to(dtype), steps=8, order=order, method=method, skip_type="logSNR", denoise_to_zero=True)
                        assert reads == [], (name, algorithm, method, dtype, order)
                        assert torch.isfinite(out).all()
                        cases += 1
    assert cases == 3 * 2 * 3 * 2 * 3


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_check_finite_reads_once_per_step(method, monkeypatch):
    model = mixture2().predictor(schedule("linear"))
    x = torch.randn(3, 4)
    with counted_host_reads(monkeypatch, model) as (counted, reads):
        solver = dd.DPMSolver(counted, check_finite=True)
        solver.sample(x, steps=9, order=3, method=method, denoise_to_zero=True)
    steps = solver.last_solution.n_accepted
    # One read per step and one for the final denoising (the initial state's check comes before the
    # first evaluation).
    assert len(reads) == steps + 1 and {r[0] for r in reads} == {"__bool__"}, reads


def test_counting_catches_a_read_in_the_loop(monkeypatch):
    """The CPU proof can fail: a correction that reads the state is caught."""
    model = mixture2().predictor(schedule("linear"))
    with counted_host_reads(monkeypatch, model) as (counted, reads):
        solver = dd.DPMSolver(counted, correcting_xt_fn=lambda x, t, i: x / max(1.0, float(x.abs().max())))
        solver.sample(torch.randn(3, 4), steps=4)
    assert len(reads) == 4


def test_adaptive_loop_reads_once_per_step(monkeypatch):
    model = mixture2().predictor(schedule("linear"))
    with counted_host_reads(monkeypatch, model) as (counted, reads):
        solver = dd.DPMSolver(counted)
        solver.sample(torch.randn(3, 4), method="adaptive", order=3)
    sol = solver.last_solution
    assert len(reads) == sol.n_accepted + sol.n_rejected and {r[0] for r in reads} == {"__float__"}


def test_everything_lands_on_the_device_of_x():
    """Outputs, intermediates and the denoised sample on the meta device (a stand-in for a GPU)."""
    s = schedule("discrete")
    model = dd.wrap(mixture2().network(s, "score"), s, parameterization="score")
    x = torch.empty(2, 4, device="meta", dtype=torch.float16)
    out, states = dd.DPMSolver(model).sample(x, steps=5, order=3, return_intermediate=True, denoise_to_zero=True)
    assert all(v.device.type == "meta" and v.dtype == torch.float16 for v in [out, *states])
