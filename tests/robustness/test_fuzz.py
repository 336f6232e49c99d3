"""Property-based fuzzing of the whole sampling front, valid and invalid arguments mixed.

Each draw combines a schedule, a parameterization, an algorithm, a method, an order, a step count,
a skip type, a solver type, an end time and a dtype, some of them invalid. An oracle decides from
the arguments alone whether the call is valid; then

* a valid call must return a finite tensor of the shape and dtype of ``x`` (``check_finite=True``
  turns any NaN on the way into an error, so none can slip through), and
* an invalid call must raise a ``ValueError`` or ``TypeError`` (not a ``NonFiniteError``),

and nothing else may happen.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import diffode as dd
from diffode.solve import NonFiniteError
from tests.helpers import mixture2
from tests.robustness.common import SKIP_TYPES, schedule

SCHEDULES = ("discrete", "linear", "cosine", "discrete-cosine")
VALID = {
    "parameterization": ("noise", "data", "v", "score"),
    "algorithm": ("dpmsolver++", "dpmsolver"),
    "method": ("multistep", "singlestep", "singlestep_fixed", "adaptive"),
    "skip_type": SKIP_TYPES,
    "solver_type": ("dpmsolver", "taylor"),
    "warmup": ("lower_order", "singlestep"),
}
# One argument at a time is replaced by a bad value; "time" covers bad t_start / t_end pairs.
INVALID = {
    "parameterization": ("flow", 3, None),
    "algorithm": ("dpm", None, "DPMSolver++"),
    "method": ("euler", "", None),
    "skip_type": ("uniform", 3, None, [1.0]),
    "solver_type": ("heun", None),
    "warmup": ("none",),
    "order": (0, 4, -1, 2.0, "2", None),
    "steps": (0, -3, 2.5, "10", None, True),
    "time": ("below_t_min", "zero", "nan", "after_start", "above_T", "string"),
    "atol": (0.0, -1.0, math.nan),
}
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def time_kwargs(kind, s):
    """The t_start / t_end arguments of a draw ("after_start" asks to sample forwards in time)."""
    return {"default": {}, "small": {"t_end": max(1e-4, s.t_min)}, "below_t_min": {"t_end": s.t_min / 2},
            "zero": {"t_end": 0.0}, "nan": {"t_end": math.nan}, "after_start": {"t_start": 0.5 * s.T, "t_end": 0.9 * s.T},
            "above_T": {"t_start": s.T * 1.01}, "string": {"t_end": "0.01"}}[kind]


@st.composite
def calls(draw):
    """The arguments of one call, and which one (if any) was broken."""
    args = {name: draw(st.sampled_from(values)) for name, values in VALID.items()}
    args["order"] = draw(st.integers(2 if args["method"] == "adaptive" else 1, 3))
    args["steps"] = draw(st.integers(1, 24))
    args["time"] = draw(st.sampled_from(["default", "small"]))
    args["atol"] = 0.0078
    broken = draw(st.sampled_from([None] * 10 + sorted(INVALID)))
    if broken == "order" and args["method"] == "adaptive" and draw(st.booleans()):
        args["order"] = 1  # valid elsewhere, not for the adaptive method
    elif broken is not None:
        args[broken] = draw(st.sampled_from(INVALID[broken]))
    return args, broken


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=calls(), schedule_name=st.sampled_from(SCHEDULES), dtype=st.sampled_from(DTYPES), batch=st.integers(1, 3),
       lower_order_final=st.booleans(), denoise_to_zero=st.booleans(), seed=st.integers(0, 2**16))
def test_sampling_returns_a_finite_result_or_a_clear_error(call, schedule_name, dtype, batch, lower_order_final,
                                                            denoise_to_zero, seed):
    args, broken = call
    event("valid call" if broken is None else f"bad {broken}")
    s = schedule(schedule_name)
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gm = mixture2()
    parameterization = args["parameterization"]
    try:
        exact = gm.network(s, parameterization if parameterization in VALID["parameterization"] else "noise")

        def network(x_in, t_in):
            # The analytic density overflows float16 on the far-out states that large noise-form
            # steps reach (|x| ~ 200); a real half-precision network has its own guards, so this one
            # computes in float32 and answers in the caller's dtype.
            return exact(x_in.float(), t_in.float()).to(x_in.dtype)

        model = dd.wrap(network, s, parameterization, time_input="continuous")
        solver = dd.DPMSolver(model, algorithm=args["algorithm"], check_finite=True)
        out = solver.sample(x, steps=args["steps"], order=args["order"], method=args["method"],
                            skip_type=args["skip_type"], solver_type=args["solver_type"], warmup=args["warmup"],
                            atol=args["atol"], lower_order_final=lower_order_final, denoise_to_zero=denoise_to_zero,
                            **time_kwargs(args["time"], s))
    except NonFiniteError as error:
        pytest.fail(f"a non-finite result for {args} in {dtype} on {schedule_name}: {error}")
    except (ValueError, TypeError) as error:
        assert broken is not None, f"a valid call was refused: {args} in {dtype} on {schedule_name}: {error}"
        return
    assert broken is None, f"an invalid {broken} was accepted: {args}"
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.one_of(st.floats(-0.5, 1.5), st.sampled_from([0.0, 1.0, math.nan, math.inf, -math.inf])),
                       min_size=0, max_size=12),
       kind=st.sampled_from(["betas", "alphas_cumprod"]), sort=st.booleans())
# Issue 12: a step that barely moves lambda (1e-12), and one that does not move it at all in float64.
@example(values=[0.5, 1e-12], kind="betas", sort=False)
@example(values=[0.5, 5e-324], kind="betas", sort=False)
@example(values=[0.9, 1e-9, 0.2], kind="betas", sort=False)
def test_discrete_schedule_from_any_numbers(values, kind, sort):
    """Any list of numbers gives a usable schedule or a clear ValueError.

    A usable schedule has a strictly decreasing lambda, and ``inverse_lambda`` inverts it as exactly as
    float64 allows: lambda of the returned time is lambda to round-off (backward error), and the time
    is within round-off divided by the slope |d lambda / dt| (the conditioning: a step with a beta of
    1e-12 moves lambda by 1e-12, so one float64 lambda stands for 1e-5 of time there).
    """
    if sort:
        values = sorted(values, reverse=kind == "alphas_cumprod", key=lambda v: (math.isnan(v), v))
    try:
        s = dd.DiscreteVP(**{kind: values}, clip_lambda=None)
    except ValueError:
        return
    t = torch.linspace(s.t_min, s.T, 50, dtype=torch.float64)
    lam = s.lambda_(t)
    assert torch.isfinite(lam).all() and (lam.diff() < 0).all()
    back = s.inverse_lambda(lam)
    eps = torch.finfo(torch.float64).eps
    size = s.log_alpha(t).abs() + s.log_sigma(t).abs() + lam.abs()
    assert ((s.lambda_(back) - lam).abs() <= 16 * eps * size).all()
    # |d lambda / dt| = |f| / sigma^2; at a knot take the flatter of the two segments.
    slope = torch.minimum(s.f(t - 1e-9).abs(), s.f(t + 1e-9).abs()) / s.sigma(t) ** 2
    assert ((back - t).abs() <= 1e-9 * t + 1e-12 + 16 * eps * size / slope).all()


@settings(max_examples=80, deadline=None)
@given(t=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3)),
       schedule_name=st.sampled_from(SCHEDULES))
def test_any_time_gives_a_point_or_a_clear_error(t, schedule_name):
    s = schedule(schedule_name)
    inside = isinstance(t, (int, float)) and math.isfinite(t) and s.t_min <= t <= s.T
    # Below ~1e-300 sigma_t underflows in float64, so lambda_t cannot be represented: a clear error.
    representable = inside and (t == 0 or math.isfinite(s.lambda_(float(t)).item()))
    try:
        p = s.point(t)
    except ValueError as error:
        assert not representable, error
        return
    assert representable and p.t == t and (p.lam == math.inf if t == 0 else math.isfinite(p.lam))
