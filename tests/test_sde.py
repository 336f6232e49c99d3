"""diffode.sde against the formulas of the score-SDE paper (Song et al. 2021, arXiv:2011.13456), written
out here independently of the library, in float64 on random inputs, to 1e-12."""

import math

import pytest
import torch

import diffode as dd
from diffode.sde import SDE, VESDE, VPSDE, ReverseSDE, SubVPSDE, score_function
from tests.helpers import every_schedule, mixture2

B, SHAPE = 6, (6, 3, 4)


def close(a, b):
    return torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def random_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    return x, t


def bc(v):  # a (B,) tensor broadcast against (B, 3, 4)
    return v.reshape(-1, 1, 1)


# -- the paper's SDEs -----------------------------------------------------------------------------------

def vp_paper(x, t, b0, b1):
    beta = b0 + t * (b1 - b0)                                      # beta(t) = beta_min + t (beta_max - beta_min)
    log_mean = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0              # log of the mean coefficient of p_0t
    return dict(drift=-0.5 * bc(beta) * x, diffusion=beta.sqrt(), mean=bc(log_mean.exp()) * x,
                std=(1 - (2 * log_mean).exp()).sqrt())


def subvp_paper(x, t, b0, b1):
    beta = b0 + t * (b1 - b0)
    log_mean = -0.25 * t**2 * (b1 - b0) - 0.5 * t * b0
    discount = 1 - torch.exp(-2 * b0 * t - (b1 - b0) * t**2)        # the sub-VP diffusion discount
    return dict(drift=-0.5 * bc(beta) * x, diffusion=(beta * discount).sqrt(), mean=bc(log_mean.exp()) * x,
                std=1 - (2 * log_mean).exp())


def ve_paper(x, t, smin, smax):
    sigma = smin * (smax / smin) ** t                               # sigma(t) of the VE SDE
    return dict(drift=torch.zeros_like(x), diffusion=sigma * math.sqrt(2 * (math.log(smax) - math.log(smin))),
                mean=x, std=sigma)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make,paper,params", [
    (VPSDE, vp_paper, (0.1, 20.0)), (VPSDE, vp_paper, (0.05, 12.5)),
    (SubVPSDE, subvp_paper, (0.1, 20.0)), (SubVPSDE, subvp_paper, (0.3, 7.0)),
    (VESDE, ve_paper, (0.01, 50.0)), (VESDE, ve_paper, (0.02, 378.0)),
])
def test_sde_and_marginals_match_the_paper(make, paper, params, seed):
    sde = make(*params, N=1000)
    x, t = random_inputs(seed)
    want = paper(x, t, *params)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    assert close(drift, want["drift"]) and close(diffusion, want["diffusion"])
    assert close(mean, want["mean"]) and close(std, want["std"])
    assert sde.T == 1.0 and sde.N == 1000
    assert drift.dtype == diffusion.dtype == torch.float64 and diffusion.shape == (B,)


def test_prior_matches_score_sde():
    z = torch.randn(SHAPE, dtype=torch.float64)
    n = 12
    normal = -n / 2 * math.log(2 * math.pi) - z.reshape(B, -1).square().sum(1) / 2
    assert close(VPSDE().prior_logp(z), normal) and close(SubVPSDE().prior_logp(z), normal)
    smax = 50.0
    ve = -n / 2 * math.log(2 * math.pi * smax**2) - z.reshape(B, -1).square().sum(1) / (2 * smax**2)
    assert close(VESDE().prior_logp(z), ve)
    g = torch.Generator().manual_seed(3)
    draw = VESDE().prior_sampling((4000, 2), g, dtype=torch.float64)
    assert draw.shape == (4000, 2) and draw.dtype == torch.float64
    assert abs(draw.std().item() / smax - 1) < 0.03
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(VPSDE().prior_sampling((3, 2), g1), VPSDE().prior_sampling((3, 2), g2))


def test_vp_discretization_is_ddpm():
    n, b0, b1 = 1000, 0.1, 20.0
    sde = VPSDE(b0, b1, N=n)
    betas = torch.linspace(b0 / n, b1 / n, n, dtype=torch.float64)   # DDPM betas of score_sde's VP SDE
    assert close(sde.discrete_betas, betas)
    x, t = random_inputs()
    t = torch.cat([t[:-2], torch.tensor([0.0, 1.0], dtype=torch.float64)])  # both ends of the grid
    i = (t * (n - 1)).long()
    f, G = sde.discretize(x, t)
    assert close(f, bc((1 - betas[i]).sqrt()) * x - x) and close(G, betas[i].sqrt())


def test_ve_discretization_is_smld():
    n, smin, smax = 1000, 0.01, 50.0
    sde = VESDE(smin, smax, N=n)
    sigmas = torch.exp(torch.linspace(math.log(smin), math.log(smax), n, dtype=torch.float64))
    assert close(sde.discrete_sigmas, sigmas)
    x, t = random_inputs()
    t = torch.cat([t[:-2], torch.tensor([0.0, 1.0], dtype=torch.float64)])
    i = (t * (n - 1)).long()
    previous = torch.where(i == 0, torch.zeros_like(t), sigmas[(i - 1).clamp_min(0)])
    f, G = sde.discretize(x, t)
    assert torch.equal(f, torch.zeros_like(x)) and close(G, (sigmas[i] ** 2 - previous**2).sqrt())


def test_subvp_discretization_is_euler_maruyama():
    sde = SubVPSDE(N=500)
    x, t = random_inputs()
    want = subvp_paper(x, t, 0.1, 20.0)
    f, G = sde.discretize(x, t)
    assert close(f, want["drift"] / 500) and close(G, want["diffusion"] * math.sqrt(1 / 500))


@pytest.mark.parametrize("probability_flow", [False, True])
@pytest.mark.parametrize("make,paper,params", [(VPSDE, vp_paper, (0.1, 20.0)), (SubVPSDE, subvp_paper, (0.1, 20.0)),
                                               (VESDE, ve_paper, (0.01, 50.0))])
def test_reverse_sde_and_probability_flow_match_the_paper(make, paper, params, probability_flow):
    sde = make(*params)
    x, t = random_inputs(4)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(SHAPE, generator=g, dtype=torch.float64)

    def score_fn(x, t):  # any function of x and t will do
        return torch.tanh(x) * bc(1 + t) + w

    rev = sde.reverse(score_fn, probability_flow=probability_flow)
    want = paper(x, t, *params)
    score = score_fn(x, t)
    g2 = bc(want["diffusion"] ** 2)
    drift, diffusion = rev.sde(x, t)
    if probability_flow:   # probability flow: dx = [f - g^2/2 score] dt
        assert close(drift, want["drift"] - 0.5 * g2 * score) and torch.equal(diffusion, torch.zeros(B, dtype=torch.float64))
    else:                  # reverse SDE: dx = [f - g^2 score] dt + g dw
        assert close(drift, want["drift"] - g2 * score) and close(diffusion, want["diffusion"])
    f, G = sde.discretize(x, t)
    rf, rG = rev.discretize(x, t)
    weight = 0.5 if probability_flow else 1.0
    assert close(rf, f - weight * bc(G**2) * score)
    assert torch.equal(rG, torch.zeros_like(G)) if probability_flow else torch.equal(rG, G)
    assert rev.T == sde.T and rev.N == sde.N and rev.probability_flow is probability_flow
    assert torch.equal(rev.prior_logp(x), sde.prior_logp(x))


def test_named_sdes_are_sdes_of_the_schedules():
    assert isinstance(VPSDE().schedule, dd.LinearVP) and isinstance(SubVPSDE().schedule, dd.SubVP)
    assert isinstance(VESDE().schedule, dd.VE)
    assert VPSDE(0.2, 10.0).schedule.beta_1 == 10.0 and VESDE(0.1, 9.0).sigma_max == 9.0
    assert repr(VPSDE()) == "VPSDE(beta_min=0.1, beta_max=20.0, N=1000)"


@pytest.mark.parametrize("name", sorted(every_schedule()))
def test_any_schedule_is_an_sde_whose_probability_flow_drives_the_predictor(name):
    schedule = every_schedule()[name]
    sde = SDE(schedule, N=100)
    mixture = mixture2()
    model = mixture.predictor(schedule)
    x = torch.randn(4, 4, dtype=torch.float64) * schedule.prior_std()
    t = torch.full((4,), 0.5 * (schedule.t_min + schedule.T), dtype=torch.float64)
    # the probability-flow drift is the schedule's, f x + g^2 / (2 sigma) eps: the score is -eps / sigma
    drift, diffusion = sde.reverse(model, probability_flow=True).sde(x, t)
    eps = model.noise(x, t)
    assert close(drift, schedule.probability_flow_drift(x, t, eps)) and (diffusion == 0).all()
    assert close(score_function(model)(x, t), mixture.score(x, t, schedule))
    mean, std = sde.marginal_prob(x, t)
    assert close(mean, schedule.alpha(t).reshape(-1, 1) * x) and close(std, schedule.sigma(t))
    f, G = sde.discretize(x, t)
    assert f.shape == x.shape and G.shape == (4,) and torch.isfinite(f).all() and (G > 0).all()
    if not isinstance(schedule, (dd.schedules.VPSchedule, dd.VE)):
        d, g = sde.sde(x, t)
        assert close(f, d * sde.dt) and close(G, g * math.sqrt(sde.dt))


def test_float32_and_scalar_times():
    sde = VPSDE()
    x = torch.randn(3, 2)
    drift, diffusion = sde.sde(x, 0.5)
    assert drift.dtype == torch.float32 and diffusion.shape == () and diffusion.dtype == torch.float32
    f, G = sde.discretize(x, 0.5)
    assert f.dtype == torch.float32 and G.shape == ()


def test_bad_arguments():
    with pytest.raises(TypeError, match="schedule must be a NoiseSchedule"):
        SDE("vp")
    with pytest.raises(ValueError, match="N must be an integer >= 2"):
        VPSDE(N=1)
    with pytest.raises(ValueError, match="beta_0 must be <= beta_1"):
        VPSDE(beta_min=2.0, beta_max=1.0)
    with pytest.raises(ValueError, match="sigma_min must be < sigma_max"):
        VESDE(sigma_min=5.0, sigma_max=1.0)
    with pytest.raises(TypeError, match="score_fn must be a callable"):
        VPSDE().reverse(3.0)
    with pytest.raises(AttributeError, match="variance-preserving schedules only"):
        _ = VESDE().discrete_betas
    with pytest.raises(AttributeError, match="VE schedule only"):
        _ = VPSDE().discrete_sigmas
    assert isinstance(VPSDE().reverse(lambda x, t: x), ReverseSDE)
