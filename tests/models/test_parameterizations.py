import pytest
import torch

import diffode as dd
from diffode.models import EDMPreconditioned, get_parameterization
from tests.helpers import every_schedule, mixture2

NAMES = ["noise", "data", "v", "score", "flow", "denoiser", "edm"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("t", [0.01, 0.5, 0.99])
def test_round_trip_through_every_parameterization(name, t):
    s = dd.LinearVP()
    p = s.point(t)
    x = torch.randn(6, 4, dtype=torch.float64)
    eps = torch.randn(6, 4, dtype=torch.float64)
    param = get_parameterization(name)
    out = param.from_noise(eps, x, p.alpha, p.sigma)
    assert torch.allclose(param.to_noise(out, x, p.alpha, p.sigma), eps, rtol=1e-12, atol=1e-12)
    x0 = (x - p.sigma * eps) / p.alpha
    assert torch.allclose(param.to_data(out, x, p.alpha, p.sigma), x0, rtol=1e-12, atol=1e-12)


def test_chain_eps_x0_v_eps():
    s = dd.CosineVP()
    p = s.point(0.3)
    x = torch.randn(5, 3, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    data, velocity, noise = (get_parameterization(n) for n in ("data", "v", "noise"))
    x0 = noise.to_data(eps, x, p.alpha, p.sigma)
    v = velocity.from_noise(data.to_noise(x0, x, p.alpha, p.sigma), x, p.alpha, p.sigma)
    assert torch.allclose(v, p.alpha * eps - p.sigma * x0, atol=1e-12)
    assert torch.allclose(velocity.to_noise(v, x, p.alpha, p.sigma), eps, atol=1e-12)


@pytest.mark.parametrize("name", ["noise", "data", "v", "score", "flow"])   # networks that see x_t unscaled
def test_wrapped_parameterizations_agree(name):
    s = dd.LinearVP()
    gm = mixture2()
    model = dd.wrap(gm.network(s, name), s, parameterization=name, time_input="continuous")
    x = torch.randn(7, 4, dtype=torch.float64)
    for t in (0.02, 0.4, 0.97):
        p = s.point(t)
        assert torch.allclose(model.noise(x, t), gm.eps(x, p.alpha, p.sigma), rtol=1e-10, atol=1e-12)
        assert torch.allclose(model.data(x, t), gm.x0(x, p.alpha, p.sigma), rtol=1e-9, atol=1e-10)


def test_per_sample_times():
    s = dd.LinearVP()
    gm = mixture2()
    model = dd.wrap(gm.network(s, "v"), s, parameterization="v", time_input="continuous")
    x = torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    batched = model.noise(x, t)
    for i in range(3):
        assert torch.allclose(batched[i], model.noise(x[i:i + 1], float(t[i]))[0], atol=1e-12)


def test_aliases_and_unknown():
    assert get_parameterization("x_start").name == "data"
    assert get_parameterization("eps").name == "noise"
    assert get_parameterization("v_prediction").name == "v"
    assert get_parameterization("flow_velocity").name == "flow"
    assert get_parameterization("k_diffusion").name == "denoiser"
    assert get_parameterization("edm").sigma_data == 0.5
    with pytest.raises(ValueError, match="unknown parameterization 'rectified'.*'flow'"):
        get_parameterization("rectified")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["noise", "data"])
def test_affine_is_the_one_conversion_table(name, kind):
    """prediction = a * x + b * out, with a exactly 0.0 where x does not enter (no conversion pass)."""
    s = dd.LinearVP()
    p = s.point(0.37)
    x = torch.randn(6, 4, dtype=torch.float64)
    eps = torch.randn(6, 4, dtype=torch.float64)
    param = get_parameterization(name)
    out = param.from_noise(eps, x, p.alpha, p.sigma)
    a, b = param.affine(kind, p.alpha, p.sigma)
    expected = eps if kind == "noise" else (x - p.sigma * eps) / p.alpha
    torch.testing.assert_close(a * x + b * out, expected, rtol=1e-12, atol=1e-12)
    involves_x = {("noise", "data"), ("data", "noise"), ("v", "noise"), ("v", "data"), ("score", "data"),
                  ("flow", "noise"), ("flow", "data"), ("denoiser", "noise"), ("edm", "noise"), ("edm", "data")}
    assert (a != 0.0) == ((name, kind) in involves_x)
    converted = param.convert(kind, out, x, p.alpha, p.sigma)
    torch.testing.assert_close(converted, expected, rtol=1e-12, atol=1e-12)
    if (a, b) == (0.0, 1.0):  # the prediction is the output itself: no tensor operation
        assert converted is out


def test_conversions_never_write_their_inputs():
    s = dd.LinearVP()
    p = s.point(0.37)
    for name in NAMES:
        for kind in ("noise", "data"):
            x, out = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
            x_copy, out_copy = x.clone(), out.clone()
            get_parameterization(name).convert(kind, out, x, p.alpha, p.sigma)
            assert torch.equal(x, x_copy) and torch.equal(out, out_copy)


@pytest.mark.parametrize("schedule_name", sorted(every_schedule()))
@pytest.mark.parametrize("param", [get_parameterization(n) for n in NAMES] + [EDMPreconditioned(sigma_data=1.7)],
                         ids=NAMES + ["edm1.7"])
def test_round_trip_on_every_path(schedule_name, param):
    """Every conversion is exact off VP too: x = alpha x0 + sigma eps, and from_noise inverts to_noise."""
    s = every_schedule()[schedule_name]
    x = torch.randn(6, 4, dtype=torch.float64)
    eps = torch.randn(6, 4, dtype=torch.float64)
    for t in torch.linspace(s.t_min + 0.01 * (s.T - s.t_min), s.T, 4).tolist():
        p = s.point(t)
        out = param.from_noise(eps, x, p.alpha, p.sigma)
        torch.testing.assert_close(param.to_noise(out, x, p.alpha, p.sigma), eps, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(p.alpha * param.to_data(out, x, p.alpha, p.sigma) + p.sigma * eps, x,
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("schedule_name", ["linear", "ve", "edm", "flow_shift3"])
def test_v_and_flow_outputs_are_their_definitions(schedule_name):
    """v = alpha eps - sigma x0 (diffusers) and u = eps - x0 (rectified flow) on any path."""
    s = every_schedule()[schedule_name]
    p = s.point(0.4 * s.T)
    x0, eps = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    x = p.alpha * x0 + p.sigma * eps
    v = get_parameterization("v").from_noise(eps, x, p.alpha, p.sigma)
    u = get_parameterization("flow").from_noise(eps, x, p.alpha, p.sigma)
    torch.testing.assert_close(v, p.alpha * eps - p.sigma * x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(u, eps - x0, rtol=1e-10, atol=1e-10)


def test_edm_preconditioning_is_table_1_of_karras():
    """On the EDM path (alpha = 1): x0 = c_skip x + c_out F, and the network sees c_in x."""
    param = EDMPreconditioned(sigma_data=0.5)
    for sigma in (0.002, 0.3, 80.0):
        c_skip = 0.25 / (sigma**2 + 0.25)
        c_out = sigma * 0.5 / (sigma**2 + 0.25) ** 0.5
        c_in = 1.0 / (sigma**2 + 0.25) ** 0.5
        a, b = param.affine("data", 1.0, sigma)
        assert a == pytest.approx(c_skip, rel=1e-14) and b == pytest.approx(c_out, rel=1e-14)
        assert param.input_scale(1.0, sigma) == pytest.approx(c_in, rel=1e-14)
        a, b = param.affine("noise", 1.0, sigma)   # eps = (x - x0) / sigma
        assert a == pytest.approx((1 - c_skip) / sigma, rel=1e-12) and b == pytest.approx(-c_out / sigma, rel=1e-12)
