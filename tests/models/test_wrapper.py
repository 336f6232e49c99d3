import math

import pytest
import torch

import diffode as dd
from diffode.models import ContinuousTime, DiscreteTime, concat_conditions
from tests.helpers import DDPM_BETAS, mixture2


def test_discrete_time_input_mapping():
    s = dd.DiscreteVP(betas=DDPM_BETAS)
    seen = []

    def net(x, t_input):
        seen.append(t_input)
        return torch.zeros_like(x)

    model = dd.wrap(net, s)
    x = torch.zeros(2, 3)
    model.noise(x, 1.0 / 1000)
    model.noise(x, 1.0)
    assert torch.allclose(seen[0], torch.zeros(2)) and torch.allclose(seen[1], torch.full((2,), 999.0))
    assert seen[0].dtype == torch.float32 and seen[0].shape == (2,)
    assert isinstance(model.time_input, DiscreteTime)


def test_continuous_time_input_scale_and_half_precision():
    s = dd.LinearVP()
    seen = []
    model = dd.wrap(lambda x, t: seen.append(t) or torch.zeros_like(x), s, time_input=ContinuousTime(1000.0))
    model.noise(torch.zeros(2, 2, dtype=torch.float16), 0.25)
    assert seen[0].dtype == torch.float32 and torch.allclose(seen[0], torch.full((2,), 250.0))


def test_model_kwargs_pass_through_unchanged():
    s = dd.LinearVP()
    marker = object()
    got = {}

    def net(x, t, *, extra, flag=False):
        got.update(extra=extra, flag=flag)
        return torch.zeros_like(x)

    dd.wrap(net, s, model_kwargs={"extra": marker, "flag": True}).noise(torch.zeros(1, 2), 0.5)
    assert got["extra"] is marker and got["flag"] is True


def _cond_net(s, gm):
    base = gm.network(s, "noise")

    def net(x, t, c):
        return base(x, t) + c * 0.1 * x

    return net


@pytest.mark.parametrize("scale", [0.0, 1.0, 3.0])
def test_classifier_free_guidance(scale):
    s = dd.LinearVP()
    gm = mixture2()
    net = _cond_net(s, gm)
    x = torch.randn(4, 4, dtype=torch.float64)
    c = torch.full((4, 1), 2.0, dtype=torch.float64)
    u = torch.zeros(4, 1, dtype=torch.float64)
    calls = []

    def counted(x, t, cond):
        calls.append(x.shape[0])
        return net(x, t, cond)

    guided = dd.wrap(counted, s, guidance="classifier-free", condition=c, unconditional_condition=u,
                     scale=scale, time_input="continuous")
    cond = dd.wrap(net, s, condition=c, time_input="continuous")
    uncond = dd.wrap(net, s, condition=u, time_input="continuous")
    t = 0.3
    expected = uncond.noise(x, t) + scale * (cond.noise(x, t) - uncond.noise(x, t))
    assert torch.allclose(guided.noise(x, t), expected, atol=1e-12)
    # One batched forward of the doubled batch (scale 1 needs only the conditional half).
    assert calls == ([4] if scale == 1.0 else [8])


def test_concat_conditions_nested():
    a = {"c_concat": [torch.ones(2, 1)], "c_crossattn": [torch.zeros(2, 3)]}
    b = {"c_concat": [torch.ones(2, 1) * 2], "c_crossattn": [torch.ones(2, 3)]}
    out = concat_conditions(a, b)
    assert out["c_concat"][0].shape == (4, 1) and out["c_crossattn"][0][2:].eq(1).all()
    with pytest.raises(ValueError, match="different keys"):
        concat_conditions({"a": torch.ones(1)}, {"b": torch.ones(1)})


def test_classifier_guidance_adds_scaled_gradient():
    s = dd.LinearVP()
    gm = mixture2()
    target = torch.tensor([1.0, 0.0, -1.0, 0.5], dtype=torch.float64)

    def classifier(x, t, c):
        return -((x - c) ** 2).sum(dim=1)

    model = dd.wrap(gm.network(s), s, guidance="classifier", classifier_fn=classifier, condition=target,
                    scale=2.0, time_input="continuous")
    x = torch.randn(3, 4, dtype=torch.float64)
    p = s.point(0.5)
    expected = gm.eps(x, p.alpha, p.sigma) - 2.0 * p.sigma * (-2 * (x - target))
    assert torch.allclose(model.noise(x, 0.5), expected, atol=1e-12)
    assert torch.allclose(model.data(x, 0.5), (x - p.sigma * expected) / p.alpha, atol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(parameterization="rectified_flow"), "unknown parameterization"),
    (dict(guidance="cfg"), "unknown guidance"),
    (dict(guidance="classifier-free", condition=torch.ones(1)), "unconditional_condition"),
    (dict(guidance="classifier", condition=torch.ones(1)), "classifier_fn"),
    (dict(guidance="classifier", classifier_fn=lambda *a: 0), "condition"),
    (dict(scale=math.nan), "scale must be finite"),
    (dict(time_input="discrete"), "discrete schedule"),
])
def test_wrap_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dd.wrap(lambda x, t: x, dd.LinearVP(), **kwargs)


def test_wrong_output_shape_is_reported():
    model = dd.wrap(lambda x, t: x[:, :1], dd.LinearVP())
    with pytest.raises(ValueError, match="output must have the shape of x"):
        model.noise(torch.zeros(2, 3), 0.5)
