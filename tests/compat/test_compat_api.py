"""The interface of diffode.compat.dpm_solver: signatures, the v2 constructor form, the public helpers,
and a replica of how Stable Diffusion's DPM-Solver sampler plugin calls the module."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import pytest
import torch

from diffode.compat import dpm_solver as compat
from diffode.compat.dpm_solver import DPM_Solver, DPM_SolverV2, NoiseScheduleVP, model_wrapper
from tests.fixtures import make_reference_golden as gen

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "reference_golden.pt"
EMPTY = inspect.Parameter.empty

# (name, default) of the reference's public signatures, in order (self omitted).
SAMPLE_CURRENT = [("x", EMPTY), ("steps", 20), ("t_start", None), ("t_end", None), ("order", 2),
                  ("skip_type", "time_uniform"), ("method", "multistep"), ("lower_order_final", True),
                  ("denoise_to_zero", False), ("solver_type", "dpmsolver"), ("atol", 0.0078), ("rtol", 0.05),
                  ("return_intermediate", False)]
SAMPLE_V2 = [("x", EMPTY), ("steps", 20), ("t_start", None), ("t_end", None), ("order", 3),
             ("skip_type", "time_uniform"), ("method", "singlestep"), ("lower_order_final", True),
             ("denoise_to_zero", False), ("solver_type", "dpm_solver"), ("atol", 0.0078), ("rtol", 0.05),
             ("callback", None), ("img_callback", None)]
ADAPTIVE = [("x", EMPTY), ("order", EMPTY), ("t_T", EMPTY), ("t_0", EMPTY), ("h_init", 0.05), ("atol", 0.0078),
            ("rtol", 0.05), ("theta", 0.9), ("t_err", 1e-5)]
SIGNATURES = [
    (NoiseScheduleVP.__init__, [("schedule", "discrete"), ("betas", None), ("alphas_cumprod", None),
                                ("continuous_beta_0", 0.1), ("continuous_beta_1", 20.), ("dtype", torch.float32)], []),
    (model_wrapper, [("model", EMPTY), ("noise_schedule", EMPTY), ("model_type", "noise"), ("model_kwargs", {}),
                     ("guidance_type", "uncond"), ("condition", None), ("unconditional_condition", None),
                     ("guidance_scale", 1.), ("classifier_fn", None), ("classifier_kwargs", {})], []),
    (DPM_Solver.__init__, [("model_fn", EMPTY), ("noise_schedule", EMPTY), ("algorithm_type", "dpmsolver++"),
                           ("correcting_x0_fn", None), ("correcting_xt_fn", None), ("thresholding_max_val", 1.),
                           ("dynamic_thresholding_ratio", 0.995)], []),
    (DPM_Solver.sample, SAMPLE_CURRENT, []),
    (DPM_Solver.inverse, SAMPLE_CURRENT, []),
    (DPM_Solver.add_noise, [("x", EMPTY), ("t", EMPTY), ("noise", None)], []),
    (DPM_Solver.get_time_steps,
     [("skip_type", EMPTY), ("t_T", EMPTY), ("t_0", EMPTY), ("N", EMPTY), ("device", EMPTY)], []),
    (DPM_Solver.get_orders_and_timesteps_for_singlestep_solver,
     [("steps", EMPTY), ("order", EMPTY), ("skip_type", EMPTY), ("t_T", EMPTY), ("t_0", EMPTY), ("device", EMPTY)], []),
    (DPM_Solver.noise_prediction_fn, [("x", EMPTY), ("t", EMPTY)], []),
    (DPM_Solver.data_prediction_fn, [("x", EMPTY), ("t", EMPTY)], []),
    (DPM_Solver.model_fn, [("x", EMPTY), ("t", EMPTY)], []),
    (DPM_Solver.denoise_to_zero_fn, [("x", EMPTY), ("s", EMPTY)], []),
    (DPM_Solver.dynamic_thresholding_fn, [("x0", EMPTY), ("t", EMPTY)], []),
    (DPM_Solver.dpm_solver_first_update, [("x", EMPTY), ("s", EMPTY), ("t", EMPTY), ("model_s", None),
                                          ("return_intermediate", False)], []),
    (DPM_Solver.singlestep_dpm_solver_second_update,
     [("x", EMPTY), ("s", EMPTY), ("t", EMPTY), ("r1", 0.5), ("model_s", None), ("return_intermediate", False),
      ("solver_type", "dpmsolver")], []),
    (DPM_Solver.singlestep_dpm_solver_third_update,
     [("x", EMPTY), ("s", EMPTY), ("t", EMPTY), ("r1", 1. / 3.), ("r2", 2. / 3.), ("model_s", None),
      ("model_s1", None), ("return_intermediate", False), ("solver_type", "dpmsolver")], []),
    (DPM_Solver.multistep_dpm_solver_second_update,
     [("x", EMPTY), ("model_prev_list", EMPTY), ("t_prev_list", EMPTY), ("t", EMPTY), ("solver_type", "dpmsolver")], []),
    (DPM_Solver.multistep_dpm_solver_third_update,
     [("x", EMPTY), ("model_prev_list", EMPTY), ("t_prev_list", EMPTY), ("t", EMPTY), ("solver_type", "dpmsolver")], []),
    (DPM_Solver.singlestep_dpm_solver_update,
     [("x", EMPTY), ("s", EMPTY), ("t", EMPTY), ("order", EMPTY), ("return_intermediate", False),
      ("solver_type", "dpmsolver"), ("r1", None), ("r2", None)], []),
    (DPM_Solver.multistep_dpm_solver_update,
     [("x", EMPTY), ("model_prev_list", EMPTY), ("t_prev_list", EMPTY), ("t", EMPTY), ("order", EMPTY),
      ("solver_type", "dpmsolver")], []),
    (DPM_Solver.dpm_solver_adaptive, ADAPTIVE + [("solver_type", "dpmsolver")], []),
    (DPM_SolverV2.__init__, [("model_fn", EMPTY), ("noise_schedule", EMPTY), ("predict_x0", False),
                             ("thresholding", False), ("max_val", 1.)], []),
    (DPM_SolverV2.sample, SAMPLE_V2, [("return_intermediate", False)]),
    (DPM_SolverV2.dpm_solver_adaptive, ADAPTIVE + [("solver_type", "dpm_solver"), ("callback", None),
                                                  ("img_callback", None)], []),
]


@functools.lru_cache(maxsize=1)
def golden_by_name() -> dict:
    return {c["name"]: c for c in torch.load(FIXTURE, weights_only=True)["cases"]}


def relative(actual, expected) -> float:
    return float((actual.double() - expected.double()).abs().max() / expected.double().abs().max())


def ddpm_schedule(dtype=torch.float64, **kwargs) -> NoiseScheduleVP:
    return NoiseScheduleVP("discrete", betas=torch.linspace(1e-4, 0.02, 1000, dtype=dtype), dtype=dtype, **kwargs)


def mixture_solver(ns, algorithm_type="dpmsolver++", **kwargs):
    raw = gen.CountingModel(ns)
    return raw, DPM_Solver(model_wrapper(lambda x, t: raw(x, t), ns), ns, algorithm_type, **kwargs)


def x_T(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(dtype)


# -- signatures and the two constructor forms ---------------------------------------------------------


@pytest.mark.parametrize("function,expected,extra", SIGNATURES, ids=[f[0].__qualname__ for f in SIGNATURES])
def test_signatures_match_the_reference(function, expected, extra):
    params = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    assert [(p.name, p.default) for p in params] == expected + extra
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params)
    for (name, default), p in zip(expected, params):
        assert type(p.default) is type(default) or default is EMPTY, (name, p.default)


def test_class_signature_is_the_constructors():
    assert list(inspect.signature(DPM_Solver).parameters)[:3] == ["model_fn", "noise_schedule", "algorithm_type"]
    assert list(inspect.signature(DPM_SolverV2).parameters)[2:] == ["predict_x0", "thresholding", "max_val"]


def test_v2_keywords_select_the_v2_generation():
    ns = ddpm_schedule()
    fn = model_wrapper(lambda x, t: x, ns)
    current = DPM_Solver(fn, ns)
    assert type(current) is DPM_Solver and current.algorithm_type == "dpmsolver++"
    assert DPM_Solver(fn, ns, "dpmsolver").algorithm_type == "dpmsolver"
    for solver in (DPM_Solver(fn, ns, predict_x0=True, thresholding=True, max_val=2.0),
                   DPM_Solver(fn, ns, True, True, 2.0)):
        assert isinstance(solver, DPM_SolverV2) and isinstance(solver, DPM_Solver)
        assert solver.algorithm_type == "dpmsolver++" and solver.predict_x0 and solver.max_val == 2.0
        assert inspect.signature(solver.sample).parameters["order"].default == 3
        assert inspect.signature(solver.sample).parameters["method"].default == "singlestep"
    v2 = DPM_Solver(fn, ns, predict_x0=False)
    assert type(v2) is DPM_SolverV2 and v2.algorithm_type == "dpmsolver" and not v2.thresholding
    with pytest.raises(TypeError, match="together with current ones"):
        DPM_Solver(fn, ns, predict_x0=True, algorithm_type="dpmsolver++")


def test_v2_thresholding_is_dynamic_thresholding_at_0995():
    ns = ddpm_schedule()
    x0 = torch.tensor([[0.5, -3.0, 2.0, 0.1], [0.2, 0.3, -0.4, 0.1]], dtype=torch.float64)
    v2 = DPM_Solver(model_wrapper(lambda x, t: x, ns), ns, predict_x0=True, thresholding=True, max_val=1.5)
    current = DPM_Solver(model_wrapper(lambda x, t: x, ns), ns, correcting_x0_fn="dynamic_thresholding",
                         thresholding_max_val=1.5)
    assert torch.equal(v2._x0_correction()(x0, None), current.dynamic_thresholding_fn(x0, None))
    assert current.dynamic_thresholding_fn(x0, None).abs().max() <= 1.0


def test_solver_type_spellings_and_errors():
    ns = ddpm_schedule()
    _, solver = mixture_solver(ns)
    a = solver.sample(x_T(), steps=6, solver_type="dpmsolver")
    b = solver.sample(x_T(), steps=6, solver_type="dpm_solver")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="solver_type"):
        solver.sample(x_T(), steps=6, solver_type="heun")
    with pytest.raises(ValueError, match="method"):
        solver.sample(x_T(), steps=6, method="euler")
    with pytest.raises(ValueError, match="skip_type"):
        solver.sample(x_T(), steps=6, skip_type="karras")
    with pytest.raises(ValueError, match="order"):
        solver.sample(x_T(), steps=6, order=4)
    with pytest.raises(ValueError, match="model_type"):
        model_wrapper(lambda x, t: x, ns, model_type="eps")
    with pytest.raises(ValueError, match="guidance_type"):
        model_wrapper(lambda x, t: x, ns, guidance_type="cfg")
    with pytest.raises(ValueError, match="classifier_fn"):
        model_wrapper(lambda x, t: x, ns, guidance_type="classifier")
    with pytest.raises(ValueError, match="correcting_x0_fn"):
        DPM_Solver(model_wrapper(lambda x, t: x, ns), ns, correcting_x0_fn="clip")
    with pytest.raises(ValueError, match="Unsupported noise schedule"):
        NoiseScheduleVP("sigmoid")


# -- the schedule ------------------------------------------------------------------------------------


def test_schedule_attributes_follow_the_reference():
    ns = ddpm_schedule(dtype=torch.float32)
    assert ns.t_array.shape == ns.log_alpha_array.shape == (1, 1000) and ns.t_array.dtype == torch.float32
    assert ns.T == 1.0 and ns.total_N == 1000
    t = torch.tensor([1e-3, 0.5, 1.0], dtype=torch.float64)
    assert ns.marginal_log_mean_coeff(t).dtype == torch.float64
    assert torch.allclose(ns.inverse_lambda(ns.marginal_lambda(t)), t, atol=1e-6)
    # i-DDPM cosine alphas_cumprod: the tail with lambda < -5.1 is clipped and the rest re-spread.
    cosine_ac = gen.iddpm_cosine_alphas_cumprod(torch.float64)
    clipped = NoiseScheduleVP("discrete", alphas_cumprod=cosine_ac, dtype=torch.float64)
    assert clipped.total_N == 996 and float(clipped.marginal_lambda(torch.tensor([1.0]))) >= -5.1
    cosine = NoiseScheduleVP("cosine")
    assert cosine.T == 0.9946 and cosine.total_N == 1000
    lam = cosine.marginal_lambda(torch.tensor([0.9946, 1e-3], dtype=torch.float64))
    assert torch.allclose(lam, torch.tensor([-4.7776, 5.0475], dtype=torch.float64), atol=1e-4)
    linear = NoiseScheduleVP("linear")
    assert linear.inverse_lambda(linear.marginal_lambda(torch.tensor(0.3, dtype=torch.float64))).shape == (1,)


def test_time_grids_use_the_default_dtype():
    ns = ddpm_schedule(dtype=torch.float32)
    _, solver = mixture_solver(ns)
    for skip in ("time_uniform", "logSNR", "time_quadratic"):
        grid = solver.get_time_steps(skip, 1.0, 1e-3, 10, "cpu")
        assert grid.dtype == torch.float32 and grid.shape == (11,)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        assert solver.get_time_steps("time_uniform", 1.0, 1e-3, 10, "cpu").dtype == torch.float64
    finally:
        torch.set_default_dtype(previous)
    timesteps, orders = solver.get_orders_and_timesteps_for_singlestep_solver(10, 3, "time_uniform", 1.0, 1e-3, "cpu")
    assert orders == [3, 3, 3, 1] and timesteps.shape == (5,)


# -- the public helpers agree with sample() ------------------------------------------------------------


@pytest.mark.parametrize("algorithm_type", ["dpmsolver++", "dpmsolver"])
def test_multistep_helpers_rebuild_sample(algorithm_type, float64_default):
    ns = ddpm_schedule()
    _, solver = mixture_solver(ns, algorithm_type)
    steps, order = 8, 3
    expected = solver.sample(x_T(), steps=steps, order=order, method="multistep", lower_order_final=True)
    # The reference's multistep loop, written with its public helpers.
    ts = solver.get_time_steps("time_uniform", ns.T, 1. / ns.total_N, steps, "cpu")
    x, t_list, m_list = x_T(), [ts[0]], [solver.model_fn(x_T(), ts[0])]
    for step in range(1, steps + 1):
        k = step if step < order else min(order, steps + 1 - step)
        x = solver.multistep_dpm_solver_update(x, m_list, t_list, ts[step], k)
        t_list, m_list = (t_list + [ts[step]])[-order:], (m_list + [solver.model_fn(x, ts[step])])[-order:]
    assert relative(x, expected) < 1e-12


def test_singlestep_and_adaptive_helpers_rebuild_sample(capsys, float64_default):
    # (In float32 the reference's inner grid gives r1, r2 = 1/3, 2/3 only to float32 rounding.)
    ns = NoiseScheduleVP("linear")
    raw, solver = mixture_solver(ns)
    expected = solver.sample(x_T(), steps=9, order=3, method="singlestep_fixed", skip_type="logSNR")
    ts = solver.get_time_steps("logSNR", 1.0, 1e-3, 3, "cpu")
    x = x_T()
    for s, t in zip(ts[:-1], ts[1:]):
        x = solver.singlestep_dpm_solver_update(x, s, t, 3, r1=1. / 3., r2=2. / 3.)
    assert relative(x, expected) < 1e-12
    # model_s / model_s1 given to the third-order update are used instead of new evaluations.
    s, t = ts[0], ts[1]
    x_low, parts = solver.singlestep_dpm_solver_second_update(x_T(), s, t, r1=1. / 3., return_intermediate=True)
    full, full_parts = solver.singlestep_dpm_solver_third_update(x_T(), s, t, return_intermediate=True)
    calls = raw.calls
    reused = solver.singlestep_dpm_solver_third_update(x_T(), s, t, model_s=parts["model_s"],
                                                       model_s1=parts["model_s1"])
    assert raw.calls == calls + 1 and set(full_parts) == {"model_s", "model_s1", "model_s2"}
    assert torch.allclose(full, reused, rtol=1e-13, atol=1e-13)
    adaptive = solver.sample(x_T(), method="adaptive", order=3)
    direct = solver.dpm_solver_adaptive(x_T(), 3, 1.0, 1e-3)
    assert torch.equal(adaptive, direct)
    assert "adaptive solver nfe" in capsys.readouterr().out


def test_helpers_take_one_time_per_call():
    ns = ddpm_schedule()
    _, solver = mixture_solver(ns)
    x = x_T()
    s, t = torch.tensor(0.5, dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)
    vector = solver.dpm_solver_first_update(x, s.expand(3), t.expand(3))  # as v2 passes times
    assert torch.equal(vector, solver.dpm_solver_first_update(x, s, t))
    with pytest.raises(ValueError, match="one time per call"):
        solver.dpm_solver_first_update(x, torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64), t)


def test_model_fn_is_the_noise_prediction():
    ns = ddpm_schedule()
    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    x = x_T()
    eps = gen.gmm_eps(x, ns.marginal_alpha(t), ns.marginal_std(t))
    for kind in ("noise", "x_start", "v", "score"):
        raw = gen.CountingModel(ns, kind=kind)
        model_fn = model_wrapper(lambda x, t_in: raw(x, t_in), ns, model_type=kind)
        assert torch.allclose(model_fn(x, t), eps, rtol=1e-12, atol=1e-12), kind
        assert torch.allclose(model_fn(x, t[1]), model_fn(x, t[1:2].expand(3)), rtol=1e-14, atol=1e-14)


def test_correcting_xt_fn_and_callbacks_see_the_reference_steps():
    ns = ddpm_schedule()
    seen = []

    def record(x, t, step):
        assert isinstance(t, torch.Tensor)
        seen.append((step, round(float(t.reshape(-1)[0]), 6)))
        return x

    _, solver = mixture_solver(ns, correcting_xt_fn=record)
    solver.sample(x_T(), steps=4, order=2, method="multistep", denoise_to_zero=True)
    grid = [round(float(t), 6) for t in solver.get_time_steps("time_uniform", 1.0, 1e-3, 4, "cpu")]
    assert seen == [(i, grid[i]) for i in range(5)] + [(5, 1e-3)]
    seen.clear()
    solver.sample(x_T(), steps=6, order=3, method="singlestep_fixed")
    assert [s for s, _ in seen] == [0, 1]
    raw = gen.CountingModel(ns)
    v2 = DPM_Solver(model_wrapper(lambda x, t: raw(x, t), ns), ns, predict_x0=True)
    steps, images = [], []
    v2.sample(x_T(), steps=6, order=3, method="multistep", lower_order_final=False, callback=steps.append,
              img_callback=lambda x, i: images.append(i))
    assert steps == images == [3, 4, 5, 6]
    steps.clear()
    v2.sample(x_T(), steps=7, callback=steps.append)  # v2 defaults: singlestep order 3 -> orders [3, 3, 1]
    assert steps == [0, 1, 2] and v2.last_nfe == 7 == raw.calls - 6


def test_add_noise_shapes_and_inverse():
    ns = ddpm_schedule()
    _, solver = mixture_solver(ns)
    x = x_T()
    assert solver.add_noise(x, torch.tensor([0.3, 0.7], dtype=torch.float64)).shape == (2, 3, 4)
    noise = torch.randn(1, 3, 4, dtype=torch.float64)
    one = solver.add_noise(x, torch.tensor([0.5], dtype=torch.float64), noise=noise)
    half = torch.tensor([0.5], dtype=torch.float64)
    alpha, sigma = ns.marginal_alpha(half), ns.marginal_std(half)
    assert one.shape == (3, 4) and torch.allclose(one, alpha * x + sigma * noise[0], rtol=1e-14)
    # inverse then sample: the DDIM round trip returns the start.
    data = torch.tensor([[1.0, -0.5, 0.25, 2.0], [-1.5, 0.5, 1.0, -0.75]], dtype=torch.float64)  # the modes
    noisy = solver.inverse(data, steps=100, order=1, t_start=0.05, t_end=0.5, skip_type="logSNR")
    back = solver.sample(noisy, steps=100, order=1, t_start=0.5, t_end=0.05, skip_type="logSNR")
    assert (back - data).abs().max() < 1e-2
    # The adaptive inversion runs towards t_end (the reference's step rule never gets there).
    up = solver.inverse(data, method="adaptive", order=2, t_start=0.05, t_end=0.5)
    assert torch.isfinite(up).all() and solver.last_nfe < 200


# -- Stable Diffusion's plugin, ldm/models/diffusion/dpm_solver/sampler.py ------------------------------

MODEL_TYPES = {"eps": "noise", "v": "v"}


class StubLatentDiffusion:
    """What the sampler uses of a LatentDiffusion model: betas, alphas_cumprod, parameterization and
    ``apply_model(x, t, c)`` (here the analytic mixture on flattened 1 x 2 x 2 latents)."""

    def __init__(self, betas, parameterization="eps", cond_dependent=False):
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1 - betas.double(), 0).to(betas.dtype)
        self.parameterization = parameterization
        self.device = betas.device
        ns = NoiseScheduleVP("discrete", alphas_cumprod=self.alphas_cumprod, dtype=betas.dtype)
        self.net = gen.CountingModel(ns, kind=MODEL_TYPES[parameterization], cond_dependent=cond_dependent)

    def apply_model(self, x_noisy, t, cond):
        assert x_noisy.ndim == 4 and t.shape == (x_noisy.shape[0],)
        if isinstance(cond, dict):  # ControlNet-style conditions
            cond = cond["c_crossattn"][0]
        out = self.net(x_noisy.reshape(x_noisy.shape[0], -1), t, cond)
        return out.reshape(x_noisy.shape)


class DPMSolverSamplerReplica:
    """The calls of Stability-AI/stablediffusion's DPMSolverSampler.sample, import line changed."""

    def __init__(self, model, schedule_dtype=torch.float32):
        self.model = model
        self.alphas_cumprod = model.alphas_cumprod.clone().detach().to(schedule_dtype)
        # The v2 file keeps the dtype of alphas_cumprod (float32 in the plugin); say it for float64.
        self.schedule_kwargs = {} if schedule_dtype == torch.float32 else {"dtype": schedule_dtype}

    @torch.no_grad()
    def sample(self, S, batch_size, shape, conditioning=None, x_T=None, unconditional_guidance_scale=1.,
               unconditional_conditioning=None):
        C, H, W = shape
        img = torch.randn((batch_size, C, H, W)) if x_T is None else x_T
        ns = NoiseScheduleVP('discrete', alphas_cumprod=self.alphas_cumprod, **self.schedule_kwargs)
        model_fn = model_wrapper(
            lambda x, t, c: self.model.apply_model(x, t, c),
            ns,
            model_type=MODEL_TYPES[self.model.parameterization],
            guidance_type="classifier-free",
            condition=conditioning,
            unconditional_condition=unconditional_conditioning,
            guidance_scale=unconditional_guidance_scale,
        )
        dpm_solver = DPM_Solver(model_fn, ns, predict_x0=True, thresholding=False)
        x = dpm_solver.sample(img, steps=S, skip_type="time_uniform", method="multistep", order=2,
                              lower_order_final=True)
        return x.to(self.model.device), None


def test_stable_diffusion_plugin_float32_matches_the_golden_run():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    model = StubLatentDiffusion(betas)
    sampler = DPMSolverSamplerReplica(model)
    start = x_T(torch.float32).reshape(3, 1, 2, 2)
    cond = torch.zeros(3, 1)
    out, _ = sampler.sample(20, 3, (1, 2, 2), conditioning=cond, x_T=start, unconditional_conditioning=cond)
    assert out.shape == (3, 1, 2, 2) and out.dtype == torch.float32 and model.net.calls == 20
    case = golden_by_name()["v2/disc/float32/x0/sample/method=multistep/order=2/steps=20/skip_type=time_uniform"
                            "/stablediffusion_sampler_like"]
    # The golden run took betas; the plugin passes alphas_cumprod (float32 rounding apart).
    assert relative(out.reshape(3, 4), case["output"]) < 1e-5


@pytest.mark.parametrize("parameterization,guidance,golden", [
    ("eps", 3.0, "v2/disc/x0/sample/method=multistep/order=2/steps=10/cfg"),
    ("v", 1.0, "v2/disc/x0/sample/method=multistep/order=2/steps=10/model_type=v"),
])
def test_stable_diffusion_plugin_float64_matches_the_golden_runs(parameterization, guidance, golden):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    model = StubLatentDiffusion(betas, parameterization, cond_dependent=parameterization == "eps")
    sampler = DPMSolverSamplerReplica(model, schedule_dtype=torch.float64)
    cond, uncond = torch.full((3, 1), 1.0, dtype=torch.float64), torch.zeros(3, 1, dtype=torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the golden float64 runs
    try:
        out, _ = sampler.sample(10, 3, (1, 2, 2), conditioning=cond, x_T=x_T().reshape(3, 1, 2, 2),
                                unconditional_guidance_scale=guidance, unconditional_conditioning=uncond)
    finally:
        torch.set_default_dtype(previous)
    case = golden_by_name()[golden]
    assert model.net.calls == case["nfe"] == 10
    assert relative(out.reshape(3, 4), case["output"]) < 1e-10


def test_controlnet_dict_conditions_batch_unconditional_first():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    start = x_T(torch.float32).reshape(3, 1, 2, 2)
    outs = []
    for as_dict in (False, True):
        model = StubLatentDiffusion(betas, cond_dependent=True)
        cond, uncond = torch.ones(3, 1), torch.zeros(3, 1)
        if as_dict:
            hint = torch.zeros(3, 3, 8, 8)
            cond = {"c_concat": [hint], "c_crossattn": [cond]}
            uncond = {"c_concat": [hint], "c_crossattn": [uncond]}
        out, _ = DPMSolverSamplerReplica(model).sample(8, 3, (1, 2, 2), conditioning=cond, x_T=start,
                                                       unconditional_guidance_scale=3.0,
                                                       unconditional_conditioning=uncond)
        outs.append(out)
        assert model.net.calls == 8
    # (The order [unconditional, conditional] is checked against the golden CFG run above.)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_half_precision_latents(dtype, tol):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    start = x_T(torch.float32).reshape(3, 1, 2, 2)
    cond, uncond = torch.ones(3, 1), torch.zeros(3, 1)
    outputs = []
    for x_dtype in (torch.float32, dtype):
        model = StubLatentDiffusion(betas, cond_dependent=True)
        out, _ = DPMSolverSamplerReplica(model).sample(
            20, 3, (1, 2, 2), conditioning=cond.to(x_dtype), x_T=start.to(x_dtype),
            unconditional_guidance_scale=3.0, unconditional_conditioning=uncond.to(x_dtype))
        assert out.dtype == x_dtype and torch.isfinite(out).all()
        outputs.append(out.float())
    assert relative(outputs[1], outputs[0]) < tol
    ns = NoiseScheduleVP("discrete", betas=betas)
    _, solver = mixture_solver(ns)
    adaptive = solver.sample(x_T(dtype), method="adaptive", order=2)
    assert adaptive.dtype == dtype and torch.isfinite(adaptive).all()


def test_module_exports_the_reference_names():
    for name in ("NoiseScheduleVP", "model_wrapper", "DPM_Solver", "interpolate_fn", "expand_dims"):
        assert hasattr(compat, name)
    xp = torch.tensor([[0.0, 1.0, 2.0]])
    yp = torch.tensor([[0.0, 10.0, 30.0]])
    x = torch.tensor([[-1.0], [0.5], [1.5], [3.0]])
    assert torch.allclose(compat.interpolate_fn(x, xp, yp), torch.tensor([[-10.0], [5.0], [20.0], [50.0]]))
    assert compat.expand_dims(torch.ones(3), 4).shape == (3, 1, 1, 1)


# -- CUDA (skipped without a device) ------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("method,order", [("multistep", 2), ("multistep", 3), ("singlestep", 3), ("adaptive", 3)])
def test_cuda_matches_cpu(method, order, float64_default):
    ns = ddpm_schedule()
    outputs = []
    for device in ("cpu", "cuda"):
        raw = gen.CountingModel(ns, kind="x_start")
        fn = model_wrapper(lambda x, t: raw(x, t), ns, model_type="x_start")
        solver = DPM_Solver(fn, ns, correcting_x0_fn="dynamic_thresholding", thresholding_max_val=1.5)
        out = solver.sample(x_T().to(device), steps=12, order=order, method=method, denoise_to_zero=True)
        assert out.device.type == device
        noisy = solver.add_noise(out, torch.tensor([0.3, 0.6], device=device))
        assert noisy.device.type == device and noisy.shape == (2, 3, 4)
        outputs.append(out.cpu())
    assert relative(outputs[1], outputs[0]) < 1e-10


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_stable_diffusion_plugin(dtype):
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    start = x_T(torch.float32).reshape(3, 1, 2, 2)
    cond, uncond = torch.ones(3, 1), torch.zeros(3, 1)
    outputs = []
    for device, x_dtype in (("cpu", torch.float32), ("cuda", dtype)):
        model = StubLatentDiffusion(betas.to(device), cond_dependent=True)
        out, _ = DPMSolverSamplerReplica(model).sample(
            20, 3, (1, 2, 2), conditioning=cond.to(device, x_dtype), x_T=start.to(device, x_dtype),
            unconditional_guidance_scale=3.0, unconditional_conditioning=uncond.to(device, x_dtype))
        assert out.device.type == device and out.dtype == x_dtype and torch.isfinite(out).all()
        outputs.append(out.cpu().float())
    assert relative(outputs[1], outputs[0]) < (1e-5 if dtype == torch.float32 else 2e-2)
