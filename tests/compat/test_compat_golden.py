"""diffode.compat.dpm_solver reproduces the reference DPM-Solver's golden numbers.

``tests/fixtures/reference_golden.pt`` holds 500 runs of the two reference generations (see
``tests/fixtures/make_reference_golden.py``). Each case is replayed here by the generator's own
``run_case`` with the compat module in place of the reference module, so the model, the schedule
arrays, the calls and the recorded quantities (output, intermediates, raw-model NFE, the time grid
and the singlestep orders) are produced exactly as they were for the reference.

One adaptation: the v2 file keeps the dtype of the ``betas`` / ``alphas_cumprod`` it is given,
whereas ``NoiseScheduleVP`` follows the current generation and casts them to ``dtype`` (float32 by
default). The v2 replay therefore passes the arrays' dtype explicitly.
"""

from __future__ import annotations

import functools
import math
import types
from pathlib import Path

import pytest
import torch

from diffode.compat import dpm_solver as compat
from tests.fixtures import make_reference_golden as gen

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference_golden.pt"
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}

# Inputs the current reference rejects on purpose; the compat module rejects them too.
REJECTED = ("steps<order", "adaptive_order1", "return_intermediate_adaptive", "xt_fn_adaptive")


@functools.lru_cache(maxsize=1)
def golden() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def cases_by_name() -> dict:
    return {c["name"]: c for c in golden()["cases"]}


def _v2_schedule(*args, **kwargs):
    arrays = [kwargs.get(k) for k in ("betas", "alphas_cumprod") if kwargs.get(k) is not None]
    if arrays:
        kwargs["dtype"] = arrays[0].dtype
    return compat.NoiseScheduleVP(*args, **kwargs)


REFS = {
    "current": compat,
    "v2": types.SimpleNamespace(NoiseScheduleVP=_v2_schedule, model_wrapper=compat.model_wrapper,
                                DPM_Solver=compat.DPM_Solver),
}
_RESULTS: dict[str, dict] = {}


def replay(name: str) -> dict:
    """Run a fixture case through the compat module (cached)."""
    if name not in _RESULTS:
        case, blob = cases_by_name()[name], golden()
        default = torch.get_default_dtype()
        try:
            _RESULTS[name] = gen.run_case(REFS, case, blob["x_T"], blob["x_data"])
        finally:
            torch.set_default_dtype(default)
    return _RESULTS[name]


def relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected|."""
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    diff = (actual.double() - expected.double()).abs().max()
    return float(diff / expected.double().abs().max().clamp_min(1e-300))


def _names(predicate) -> list[str]:
    return [c["name"] for c in golden()["cases"] if predicate(c)]


def equivalent_case(case: dict) -> str | None:
    """A fixture case whose reference run computes what a crashing v2 case would have computed."""
    if case["generation"] != "v2":
        return None
    call, sched = case["call_kwargs"], case["schedule"]
    algorithm = "dpmsolver++" if case["solver_kwargs"].get("predict_x0") else "dpmsolver"
    if case["name"].endswith("all_defaults"):
        # v2 defaults: DPM-Solver-fast, order 3, 20 steps, time_uniform.
        return (f"current/{sched}/{algorithm}/sample/method=singlestep/order=3/steps=20/skip_type=time_uniform"
                "/solver_type=dpmsolver")
    if case["wrapper"]["model_type"] == "score":
        # The same run with the noise-predicting model.
        return f"v2/{sched}/x0/sample/method=multistep/order=2/steps=10/skip_type=time_uniform/solver_type=dpm_solver/lof=1"
    if call.get("method") == "singlestep":
        return (f"current/{sched}/{algorithm}/sample/method=singlestep/order={call['order']}/steps={call['steps']}"
                f"/skip_type={call['skip_type']}/solver_type=dpmsolver")
    if call.get("method") == "multistep" and call["steps"] < 10 and call["skip_type"] == "time_uniform":
        # Below 10 steps both generations lower the final orders the same way.
        return (f"current/{sched}/{algorithm}/sample/method=multistep/order={call['order']}/steps={call['steps']}"
                f"/skip_type=time_uniform/solver_type=dpmsolver/lof=1")
    return None


def _parametrize(predicate):
    names = _names(predicate)
    return pytest.mark.parametrize("name", names, ids=names)


@_parametrize(lambda c: c["raises"] is None)
def test_matches_reference(name):
    case, result = cases_by_name()[name], replay(name)
    assert result["raises"] is None, f"{result['raises']}: {result['error']}"
    tol = TOLERANCE[case["precision"]]
    assert relative(result["output"], case["output"]) <= tol
    if case["intermediates"] is not None:
        assert result["intermediates"] is not None
        assert relative(result["intermediates"], case["intermediates"]) <= tol
    assert result["nfe"] == case["nfe"]
    if case["timesteps"] is not None:
        assert relative(result["timesteps"], case["timesteps"]) <= tol
    assert result["orders"] == case["orders"]


@_parametrize(lambda c: c["raises"] and c["name"].endswith(REJECTED))
def test_rejects_what_the_reference_rejects(name):
    result = replay(name)
    assert result["raises"] == "ValueError", result


@_parametrize(lambda c: c["raises"] and not c["name"].endswith(REJECTED))
def test_reference_crashes_and_gaps_now_run(name):
    """v2 crashes (cumsum without dim, history unpacking, order-1 grid, score), cosine and the
    v2 solver-type spelling in the current generation: they run, and agree with the reference
    where another fixture case computes the same thing."""
    case, result = cases_by_name()[name], replay(name)
    assert result["raises"] is None, f"{result['raises']}: {result['error']}"
    assert torch.isfinite(result["output"]).all()
    assert result["nfe"] == case["call_kwargs"].get("steps", 20)
    if name.endswith("bad_solver_type"):
        same = name.replace("solver_type=dpm_solver/bad_solver_type", "skip_type=time_uniform/solver_type=dpmsolver/lof=1")
    else:
        same = equivalent_case(case)
    if same is not None:
        expected = cases_by_name()[same]
        assert expected["raises"] is None
        assert relative(result["output"], expected["output"]) <= TOLERANCE[case["precision"]]


def test_every_case_is_covered_and_worst_differences():
    by_name = cases_by_name()
    assert len(by_name) == 500
    worst = {"float64": 0.0, "float32": 0.0}
    for name, case in by_name.items():
        if case["raises"] is None:
            result = replay(name)
            assert result["raises"] is None, name
            worst[case["precision"]] = max(worst[case["precision"]], relative(result["output"], case["output"]))
    print(f"worst relative difference: float64 {worst['float64']:.2e}, float32 {worst['float32']:.2e}")
    assert worst["float64"] <= TOLERANCE["float64"] and worst["float32"] <= TOLERANCE["float32"]
    assert math.isfinite(worst["float64"])
