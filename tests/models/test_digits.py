"""Tests for the packaged 8x8 digits epsilon network."""

import pytest
import torch

from diffode.models.digits import (
    DIGITS_NUM_TIMESTEPS,
    DigitsUNet,
    digits_betas,
    from_pixels,
    load_digits_model,
    to_images,
)


@pytest.fixture(scope="module")
def model():
    return load_digits_model()


def _alpha_bar():
    return torch.cumprod(1.0 - digits_betas(), dim=0)


def test_betas():
    betas = digits_betas()
    assert betas.dtype == torch.float64
    assert betas.shape == (DIGITS_NUM_TIMESTEPS,)
    assert torch.equal(betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_loads_frozen_in_eval_mode(model):
    assert isinstance(model, DigitsUNet)
    assert not model.training
    params = list(model.parameters())
    assert params and all(not p.requires_grad for p in params)
    assert all(p.dtype == torch.float32 for p in params)


def test_load_float64():
    m64 = load_digits_model(dtype=torch.float64)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    out = m64(x, torch.tensor([10.0, 500.0], dtype=torch.float64))
    assert out.dtype == torch.float64


def test_shapes_and_time_formats(model):
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out_vec = model(x, torch.full((3,), 250.0))
        out_scalar_tensor = model(x, torch.tensor(250.0))
        out_number = model(x, 250.0)
    assert out_vec.shape == x.shape
    assert out_vec.dtype == x.dtype
    assert torch.allclose(out_scalar_tensor, out_vec)
    assert torch.allclose(out_number, out_vec)


def test_deterministic(model):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 100.0, 500.0, 999.0])
    with torch.no_grad():
        a = model(x, t)
        b = model(x, t)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all()


def test_pure_noise_prediction(model):
    # At t = 999, alpha_bar ~ 4e-5, so x_t is essentially the noise itself.
    gen = torch.Generator().manual_seed(2)
    eps = torch.randn(64, 1, 8, 8, generator=gen)
    x0 = torch.rand(64, 1, 8, 8, generator=gen) * 2 - 1
    ab = _alpha_bar()[999].float()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    with torch.no_grad():
        pred = model(xt, 999.0)
    assert (pred - eps).pow(2).mean().item() < 0.1


def test_beats_zero_prediction_on_real_digits(model):
    datasets = pytest.importorskip("sklearn.datasets")
    images = torch.as_tensor(datasets.load_digits().images[:64], dtype=torch.float32)
    x0 = from_pixels(images).unsqueeze(1)
    gen = torch.Generator().manual_seed(3)
    eps = torch.randn(x0.shape, generator=gen)
    ab = _alpha_bar()[500].float()
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    with torch.no_grad():
        pred = model(xt, 500.0)
    mse = (pred - eps).pow(2).mean().item()
    zero_mse = eps.pow(2).mean().item()
    assert mse < 0.5 * zero_mse


def test_to_images_range():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])
    assert torch.equal(to_images(x), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(from_pixels(torch.tensor([0, 8, 16])), torch.tensor([-1.0, 0.0, 1.0]))
