"""diffode.jax.dpm_solver reproduces the reference dpm_solver_jax.py's golden numbers, and its
adaptive method (which the reference can no longer run) works.

``tests/fixtures/reference_jax_golden.npz`` holds the reference file's runs on the analytic mixture
(``tests/fixtures/make_reference_jax_golden.py``, which needs the reference file; the tests do not).
"""

import json
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

from diffode.jax import NotRepresentableError  # noqa: E402
from diffode.jax import dpm_solver as compat  # noqa: E402
from tests.fixtures import make_reference_jax_golden as gen  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference_jax_golden.npz"
GOLDEN = np.load(FIXTURE)
CASES = json.loads(str(GOLDEN["cases"]))
_SOLVERS: dict = {}


def solver(label: str, predict_x0: bool) -> compat.DPM_Solver:
    """One solver per schedule and algorithm, on one model function per schedule (shared compiled loops)."""
    if label not in _SOLVERS:
        ns = compat.NoiseScheduleVP(**gen.schedule_kwargs(label, jnp))
        _SOLVERS[label] = (ns, compat.model_wrapper(gen.mixture_network(ns, jnp), ns, model_type="noise"), {})
    ns, model_fn, by_algorithm = _SOLVERS[label]
    if predict_x0 not in by_algorithm:
        by_algorithm[predict_x0] = compat.DPM_Solver(model_fn, ns, predict_x0=predict_x0)
    return by_algorithm[predict_x0]


def ran(i: int) -> bool:
    return CASES[i]["error"] is None


# The default run replays the discrete schedule's runs; the slow run every schedule.
FIXED = [pytest.param(i, id=f"{i}-{c['schedule']}-{c['sample']}",
                      marks=() if c["schedule"] == "disc" else pytest.mark.slow)
         for i, c in enumerate(CASES) if ran(i)]


@pytest.mark.parametrize("i", FIXED)
def test_matches_the_reference_jax_file(i):
    case = CASES[i]
    out = solver(case["schedule"], **case["solver"]).sample(jnp.asarray(GOLDEN["x_T"]), **case["sample"])
    expected = GOLDEN[f"output_{i}"]
    assert np.abs(np.asarray(out) - expected).max() / np.abs(expected).max() <= 1e-11


def test_the_golden_file_covers_every_fixed_method():
    fixed = [c for c in CASES if c["sample"]["method"] != "adaptive" and c["error"] is None]
    assert {(c["schedule"], c["sample"]["method"]) for c in fixed} == {
        (label, method) for label in ("disc", "lin", "cos") for method in ("singlestep", "multistep", "singlestep_fixed")}
    # The reference's adaptive method does not run on current JAX (jax.experimental.host_callback is gone).
    assert all(c["error"] is not None for c in CASES if c["sample"]["method"] == "adaptive")


CRASHES = [pytest.param(i, id=f"{i}-{c['schedule']}-{c['sample']}")
           for i, c in enumerate(CASES) if not ran(i) and c["sample"]["method"] != "adaptive"]


@pytest.mark.parametrize("i", CRASHES)
def test_runs_where_the_reference_crashes(i):
    # e.g. the reference's singlestep logSNR grid on a discrete schedule calls .reshape on a float.
    case = CASES[i]
    s = solver(case["schedule"], **case["solver"])
    out = s.sample(jnp.asarray(GOLDEN["x_T"]), **case["sample"])
    assert bool(jnp.all(jnp.isfinite(out)))
    sample = case["sample"]
    steps = sample["steps"] if sample["method"] != "singlestep_fixed" else sample["steps"] // sample["order"] * sample["order"]
    assert s.last_nfe == steps + int(sample.get("denoise", False))


def test_adaptive_runs_and_converges():
    s = solver("disc", True)
    x = jnp.asarray(GOLDEN["x_T"])
    fine = s.sample(x, steps=200, order=3, method="multistep", skip_type="logSNR")
    errors = []
    for atol, rtol in ((0.0078, 0.05), (1e-5, 1e-5)):
        out = s.sample(x, order=3, method="adaptive", atol=atol, rtol=rtol)
        assert s.last_nfe > 0 and bool(jnp.all(jnp.isfinite(out)))
        errors.append(float(jnp.abs(out - fine).max()))
    assert errors[1] < 0.1 * errors[0] and errors[1] < 1e-3


def test_thresholding_and_classifier_guidance_are_refused():
    ns, model_fn, _ = _SOLVERS.get("disc") or (solver("disc", True) and _SOLVERS["disc"])
    thresholded = compat.DPM_Solver(model_fn, ns, predict_x0=True, thresholding=True)
    with pytest.raises(NotRepresentableError, match="not linear"):
        thresholded.sample(jnp.asarray(GOLDEN["x_T"]), steps=4, order=2, method="multistep")
    with pytest.raises(ValueError, match="classifier"):
        compat.model_wrapper(lambda x, t: x, ns, guidance_type="classifier", classifier_fn=lambda x, t, c: x)


def test_classifier_free_guidance():
    ns = compat.NoiseScheduleVP("linear")
    net = gen.mixture_network(ns, jnp)

    def conditional(x, t_input, c):
        return net(x, t_input) + c[:, None]

    x = jnp.asarray(GOLDEN["x_T"])
    cond, uncond = jnp.full((3,), 0.3), jnp.zeros(3)
    guided = compat.model_wrapper(conditional, ns, guidance_type="classifier-free", condition=cond,
                                  unconditional_condition=uncond, guidance_scale=2.0)
    t = jnp.full((3,), 0.5)
    expected = conditional(x, t, uncond) + 2.0 * (conditional(x, t, cond) - conditional(x, t, uncond))
    assert np.allclose(np.asarray(guided(x, t)), np.asarray(expected), rtol=1e-12, atol=1e-12)
