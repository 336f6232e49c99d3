"""The latent-diffusion sampler plugin on a stub latent-diffusion model."""

import math

import numpy as np
import pytest
import torch

import diffode as dd
from diffode.integrations.ldm import DPMSolverSampler

N = 1000
SHAPE = (2, 3, 3)


def scaled_linear_alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, N, dtype=torch.float64) ** 2
    return betas, torch.cumprod(1.0 - betas, 0)


def condition_value(c):
    """The stub's reading of a condition: the sum of the per-sample means of all its tensors."""
    if c is None:
        return 0.0
    if isinstance(c, torch.Tensor):
        return c.reshape(c.shape[0], -1).mean(1).reshape(-1, 1, 1, 1)
    items = c.values() if isinstance(c, dict) else c
    return sum(condition_value(item) for item in items)


class StubLDM:
    """What DPMSolverSampler needs of a LatentDiffusion model, with a smooth made-up network.

    The "network" predicts eps = tanh(x / 2 + t / 1000 + c) (c: the condition's mean); with
    ``parameterization="v"`` or ``"x0"`` it returns the v or x0 that corresponds to the same eps.
    """

    def __init__(self, parameterization="eps", zero=False, dtype=torch.float64):
        self.betas, self.alphas_cumprod = (a.to(dtype) for a in scaled_linear_alphas_cumprod())
        self.parameterization = parameterization
        self.zero = zero
        self.calls = []
        self._log_alpha = 0.5 * np.log(self.alphas_cumprod.double().numpy())

    def eps(self, x, t, c):
        if self.zero:
            return torch.zeros_like(x)
        return torch.tanh(0.5 * x + t.reshape(-1, 1, 1, 1) / 1000.0 + condition_value(c))

    def alpha_sigma(self, t):
        # The discrete step t_input sits at continuous time t_input / 1000 + 1/N (log alpha interpolated).
        grid = np.arange(1, N + 1) / N
        log_alpha = np.interp(t.double().cpu().numpy() / 1000.0 + 1.0 / N, grid, self._log_alpha)
        alpha = torch.as_tensor(np.exp(log_alpha)).reshape(-1, 1, 1, 1)
        return alpha, torch.sqrt(1.0 - alpha**2)

    def apply_model(self, x, t, c):
        self.calls.append((x.shape[0], t.clone(), c))
        eps = self.eps(x, t, c)
        if self.parameterization == "eps":
            return eps
        alpha, sigma = (v.to(x) for v in self.alpha_sigma(t))
        x0 = (x - sigma * eps) / alpha
        return alpha * eps - sigma * x0 if self.parameterization == "v" else x0


def plugin_dpmpp_2m(model, x, steps, c=None, uc=None, scale=1.0):
    """The plugin's algorithm written out: DPM-Solver++ 2M, uniform time grid from 1 to 1/N,
    classifier-free guidance with the unconditional half first, first order on the first step and,
    for fewer than 15 steps, on the last."""
    log_alpha_grid = 0.5 * np.log(model.alphas_cumprod.double().numpy())

    def coefficients(t):
        log_alpha = float(np.interp(t, np.arange(1, N + 1) / N, log_alpha_grid))
        alpha = math.exp(log_alpha)
        sigma = math.sqrt(1.0 - alpha**2)
        return alpha, sigma, math.log(alpha) - math.log(sigma)

    def data_prediction(x, t):
        t_input = torch.full((x.shape[0],), (t - 1.0 / N) * 1000.0, dtype=x.dtype)
        if uc is None or scale == 1.0:
            eps = model.eps(x, t_input, c)
        else:
            eps_u, eps_c = model.eps(torch.cat([x, x]), torch.cat([t_input, t_input]),
                                     torch.cat([uc, c])).chunk(2)
            eps = eps_u + scale * (eps_c - eps_u)
        alpha, sigma, _ = coefficients(t)
        return (x - sigma * eps) / alpha

    times = np.linspace(1.0, 1.0 / N, steps + 1)
    previous = None
    for i in range(steps):
        s, t = times[i], times[i + 1]
        _, sigma_s, lam_s = coefficients(s)
        alpha_t, sigma_t, lam_t = coefficients(t)
        h = lam_t - lam_s
        m0 = data_prediction(x, s)
        order = 1 if previous is None or (steps < 15 and i == steps - 1) else 2
        update = m0
        if order == 2:
            lam_prev, m1 = previous
            r = (lam_s - lam_prev) / h
            update = m0 + 0.5 * (m0 - m1) / r
        x = sigma_t / sigma_s * x - alpha_t * math.expm1(-h) * update
        previous = (lam_s, m0)
    return x


def noise(batch=2, seed=1):
    return torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("steps", [6, 12, 20])
def test_default_is_the_plugins_algorithm(steps):
    model = StubLDM()
    x = noise()
    c, uc = torch.randn(2, 5, dtype=torch.float64), torch.zeros(2, 5, dtype=torch.float64)
    sampler = DPMSolverSampler(model)
    out, _ = sampler.sample(steps, 2, SHAPE, conditioning=c, unconditional_conditioning=uc,
                            unconditional_guidance_scale=5.0, x_T=x, verbose=False)
    expected = plugin_dpmpp_2m(model, x, steps, c, uc, 5.0)
    assert out.dtype == torch.float64 and out.shape == x.shape
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-10)
    assert sampler.last_solution.nfe == steps == len(model.calls)


def test_guidance_batches_unconditional_first():
    model = StubLDM()
    c, uc = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    DPMSolverSampler(model).sample(3, 2, SHAPE, conditioning=c, unconditional_conditioning=uc,
                                   unconditional_guidance_scale=3.0, x_T=noise(), verbose=False)
    batch, t, c_in = model.calls[0]
    assert batch == 4 and torch.equal(c_in, torch.cat([uc, c]))
    assert torch.allclose(t, torch.full((4,), 999.0, dtype=torch.float64))
    # A scale of 1 (or no unconditional condition) runs the conditional model alone.
    model.calls.clear()
    DPMSolverSampler(model).sample(3, 2, SHAPE, conditioning=c, unconditional_conditioning=uc,
                                   unconditional_guidance_scale=1.0, x_T=noise(), verbose=False)
    assert model.calls[0][0] == 2 and model.calls[0][2] is c


def test_dict_and_list_conditions():
    """ControlNet-style dicts of lists are batched key by key and element by element."""
    model = StubLDM()
    hint, emb = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 6, dtype=torch.float64)
    u_hint, u_emb = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64)
    c = {"c_concat": [hint], "c_crossattn": [emb]}
    uc = {"c_concat": [u_hint], "c_crossattn": [u_emb]}
    sampler = DPMSolverSampler(model)
    out, _ = sampler.sample(5, 2, SHAPE, conditioning=c, unconditional_conditioning=uc,
                            unconditional_guidance_scale=2.0, x_T=noise(), verbose=False)
    _, _, c_in = model.calls[0]
    assert torch.equal(c_in["c_concat"][0], torch.cat([u_hint, hint]))
    assert torch.equal(c_in["c_crossattn"][0], torch.cat([u_emb, emb]))
    # The stub reads a condition as the sum of its means, so one tensor with that mean is the same model.
    as_tensor = (condition_value(c).reshape(2, 1) * torch.ones(2, 3, dtype=torch.float64))
    out_tensor, _ = DPMSolverSampler(model).sample(5, 2, SHAPE, conditioning=as_tensor,
                                                   unconditional_conditioning=torch.zeros(2, 3, dtype=torch.float64),
                                                   unconditional_guidance_scale=2.0, x_T=noise(), verbose=False)
    assert torch.allclose(out, out_tensor, rtol=1e-12, atol=1e-12)
    # Lists of tensors too.
    out_list, _ = DPMSolverSampler(model).sample(5, 2, SHAPE, conditioning=[hint, emb],
                                                 unconditional_conditioning=[u_hint, u_emb],
                                                 unconditional_guidance_scale=2.0, x_T=noise(), verbose=False)
    assert torch.allclose(out, out_list, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("parameterization", ["v", "x0"])
def test_parameterizations_give_the_same_samples(parameterization):
    x, c = noise(), torch.randn(2, 5, dtype=torch.float64)
    reference, _ = DPMSolverSampler(StubLDM("eps")).sample(8, 2, SHAPE, conditioning=c, x_T=x, verbose=False)
    out, _ = DPMSolverSampler(StubLDM(parameterization)).sample(8, 2, SHAPE, conditioning=c, x_T=x, verbose=False)
    assert torch.allclose(out, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name, method, order", [("ddim", "multistep", 1), ("dpmpp_3m", "multistep", 3),
                                                 ("dpm_2m", "multistep", 2), ("dpmpp_3s", "singlestep", 3)])
def test_any_integrator_matches_diffodes_own_sampler(name, method, order):
    """Other integrators: the same samples as diffode's DPMSolver front with the same options."""
    model = StubLDM()
    x, steps = noise(), 20
    sampler = DPMSolverSampler(model, integrator=name)
    out, _ = sampler.sample(steps, 2, SHAPE, x_T=x, verbose=False)
    assert len(model.calls) == sampler.last_solution.nfe == steps
    integrator = dd.get_integrator(name)
    front = dd.DPMSolver(sampler.predictor(), algorithm="dpmsolver++" if integrator.predict == "data" else "dpmsolver")
    expected = front.sample(x, steps=steps, order=order, method=method, skip_type="time_uniform")
    assert torch.allclose(out, expected, rtol=1e-12, atol=1e-12)


def test_adaptive_integrator_and_options():
    model = StubLDM()
    sampler = DPMSolverSampler(model, integrator="dpmpp_adaptive_23", atol=1e-3, rtol=1e-3)
    out, logs = sampler.sample(10, 2, SHAPE, x_T=noise(), verbose=False)
    assert torch.isfinite(out).all() and sampler.last_solution.nfe == len(model.calls)
    assert logs["x_inter"][-1] is out
    fine, _ = DPMSolverSampler(StubLDM(), integrator="dpmpp_3m").sample(200, 2, SHAPE, x_T=noise(), verbose=False)
    assert (out - fine).abs().max() < 1e-2
    # denoise_to_zero costs one more evaluation; skip_type is any diffode grid.
    sampler = DPMSolverSampler(StubLDM(), skip_type="logSNR", denoise_to_zero=True)
    sampler.sample(6, 2, SHAPE, x_T=noise(), verbose=False)
    assert sampler.last_solution.nfe == 7


def test_encode_decode_round_trip_and_stochastic_encode():
    model = StubLDM()
    sampler = DPMSolverSampler(model)
    x0 = noise(seed=3) * 0.5
    c = torch.randn(2, 5, dtype=torch.float64)
    errors = []
    for steps in (40, 80):
        sampler.make_schedule(steps)
        encoded, out = sampler.encode(x0, c, 3 * steps // 4, return_intermediates=3)
        assert out["x_encoded"] is encoded and len(out["intermediates"]) == len(out["intermediate_steps"]) >= 3
        assert not torch.allclose(encoded, x0, atol=1e-1)
        errors.append((sampler.decode(encoded, c, 3 * steps // 4) - x0).abs().max().item())
    # Inverting and sampling again returns the start up to the (second-order) integrators' error.
    assert errors[0] < 1e-2 and errors[1] < errors[0] / 3
    sampler.make_schedule(40)
    # stochastic_encode noises to the grid point that decode starts from.
    eps = noise(seed=4)
    for k in (0, 25, 40):
        t = float(sampler.times.flip(0)[k])
        p = sampler.noise_schedule.point(t)
        expected = p.alpha * x0 + p.sigma * eps
        got = sampler.stochastic_encode(x0, torch.tensor([k, k]), noise=eps)
        assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert math.isclose(float(sampler.times[0]), 1.0) and math.isclose(float(sampler.times[-1]), 1.0 / N)
    z = sampler.stochastic_encode(x0, 25, noise=eps)
    decoded = sampler.decode(z, c, 25)
    expected = dd.solve(sampler.predictor(c), z, dd.get_integrator("dpmpp_2m"), sampler.times[15:],
                        orders=[1] + [2] * 24).x
    assert torch.allclose(decoded, expected, rtol=1e-12, atol=1e-12)


def test_inpainting_mask_keeps_the_known_region():
    """mask = 1 everywhere: before the last step the state is x0 noised afresh; the zero model's
    last (first-order) step then scales it by alpha_end / alpha_s exactly."""
    model = StubLDM(zero=True)
    x0 = noise(seed=5)
    steps = 6
    sampler = DPMSolverSampler(model)
    torch.manual_seed(7)
    out, _ = sampler.sample(steps, 2, SHAPE, x_T=noise(), mask=torch.ones_like(x0), x0=x0, verbose=False)
    torch.manual_seed(7)
    draws = [torch.randn_like(x0) for _ in range(steps)]
    s, end = (sampler.noise_schedule.point(float(t)) for t in sampler.times[-2:])
    expected = end.alpha / s.alpha * (s.alpha * x0 + s.sigma * draws[-1])
    assert torch.allclose(out, expected, rtol=1e-10, atol=1e-10)
    # mask = 0 changes nothing.
    plain, _ = DPMSolverSampler(StubLDM()).sample(steps, 2, SHAPE, x_T=noise(), verbose=False)
    masked, _ = DPMSolverSampler(StubLDM()).sample(steps, 2, SHAPE, x_T=noise(), mask=torch.zeros_like(x0), x0=x0,
                                                   verbose=False)
    assert torch.equal(plain, masked)


def test_callbacks_intermediates_progress_and_device(capsys):
    model = StubLDM(dtype=torch.float32)
    seen, images = [], []
    out, logs = DPMSolverSampler(model).sample(
        7, 3, SHAPE, callback=seen.append, img_callback=lambda x0, i: images.append((i, x0.shape)),
        log_every_t=3, verbose=True)
    assert seen == list(range(7)) and [i for i, _ in images] == seen
    assert all(shape == (3, *SHAPE) for _, shape in images)
    # As the DDIM sampler: the start, then every log_every_t-th step counted from the end, and the last.
    assert len(logs["x_inter"]) == len(logs["pred_x0"]) == 1 + 3
    assert logs["x_inter"][-1] is out
    assert out.dtype == torch.float32 and out.device == model.betas.device
    assert "DPM-Solver" in capsys.readouterr().err
    DPMSolverSampler(model).sample(3, 3, SHAPE, verbose=False)
    DPMSolverSampler(model, progress=False).sample(3, 3, SHAPE)
    assert capsys.readouterr().err == ""


@pytest.mark.cuda
def test_runs_on_the_models_device():
    model = StubLDM(dtype=torch.float32)
    model.betas = model.betas.cuda()
    out, _ = DPMSolverSampler(model).sample(4, 2, SHAPE, verbose=False)
    assert out.device.type == "cuda"


def test_bad_input():
    model = StubLDM()
    with pytest.raises(TypeError, match="apply_model"):
        DPMSolverSampler(object())
    bad = StubLDM()
    bad.parameterization = "hybrid"
    with pytest.raises(ValueError, match="parameterization"):
        DPMSolverSampler(bad)
    with pytest.raises(ValueError, match="unknown integrator"):
        DPMSolverSampler(model, integrator="rk4")
    sampler = DPMSolverSampler(model)
    for option in ({"eta": 0.5}, {"temperature": 0.9}, {"score_corrector": object()}, {"ucg_schedule": [1.0]}):
        with pytest.raises(ValueError, match=next(iter(option))):
            sampler.sample(3, 2, SHAPE, verbose=False, **option)
    with pytest.raises(ValueError, match="x_T"):
        sampler.sample(3, 2, SHAPE, x_T=torch.zeros(2, 1, 3, 3), verbose=False)
    with pytest.raises(ValueError, match="S must be"):
        sampler.sample(0, 2, SHAPE, verbose=False)
    with pytest.raises(ValueError, match="mask needs x0"):
        sampler.sample(3, 2, SHAPE, mask=torch.ones(2, *SHAPE), verbose=False)
    fresh = DPMSolverSampler(model)
    with pytest.raises(ValueError, match="make_schedule"):
        fresh.encode(noise(), None, 2)
    fresh.make_schedule(5)
    with pytest.raises(ValueError, match="t_enc"):
        fresh.encode(noise(), None, 6)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 5\]"):
        fresh.stochastic_encode(noise(), torch.tensor([6, 0]))
    with pytest.raises(ValueError, match="use_original_steps"):
        fresh.decode(noise(), None, 2, use_original_steps=True)
    with pytest.warns(UserWarning, match="conditionings"):
        sampler.sample(2, 2, SHAPE, conditioning=torch.zeros(1, 5, dtype=torch.float64), verbose=False)
