"""A small pretrained noise-prediction network for 8x8 handwritten digits.

The network in this module was trained on scikit-learn's ``load_digits``
data set (1797 grayscale images of size 8x8 with integer intensities in
``0..16``) with the standard DDPM epsilon-prediction objective.  It is tiny
enough to run quickly on a CPU, which makes it a convenient "real" network for
exercising and testing diffusion ODE solvers.

Conventions used during training (and therefore required at sampling time):

* Data scaling: ``x0 = pixels / 16 * 2 - 1``, so images live in ``[-1, 1]``.
  Use :func:`to_images` to map samples back to ``[0, 1]``.
* Noise schedule: discrete-time linear DDPM betas, see :func:`digits_betas`,
  with ``alpha_bar_n = prod_{i <= n} (1 - beta_i)`` for ``n = 0..999``.
* Forward process: ``x_n = sqrt(alpha_bar_n) * x0 + sqrt(1 - alpha_bar_n) * eps``.
* Model input time: the discrete index ``t = n`` passed as a float in
  ``[0, 999]``.  Non-integer times are accepted (the time embedding is
  continuous) but were never seen during training.

This module only depends on ``torch``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "DIGITS_BETAS",
    "DIGITS_NUM_TIMESTEPS",
    "DigitsUNet",
    "digits_betas",
    "from_pixels",
    "load_digits_model",
    "to_images",
    "weights_path",
]

#: Number of discrete diffusion steps used in training.
DIGITS_NUM_TIMESTEPS: int = 1000

#: Human-readable description of the training noise schedule.  The schedule
#: itself is returned by :func:`digits_betas`.
DIGITS_BETAS: str = (
    "linear DDPM schedule: torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64); "
    "model time input t = n in [0, 999]"
)

_WEIGHTS_FILE = "digits_eps.pt"


def digits_betas() -> torch.Tensor:
    """Returns the betas the digits model was trained with.

    Returns:
        A float64 tensor of shape ``(1000,)`` holding the linear DDPM schedule
        ``torch.linspace(1e-4, 0.02, 1000)``.  Entry ``n`` is the beta of the
        discrete step whose model time input is ``t = n``.
    """
    return torch.linspace(1e-4, 0.02, DIGITS_NUM_TIMESTEPS, dtype=torch.float64)


def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """Maps raw ``load_digits`` intensities to the model's data space.

    Args:
        pixels: Tensor of intensities in ``[0, 16]`` (any shape).

    Returns:
        A floating point tensor ``pixels / 16 * 2 - 1`` in ``[-1, 1]``.
    """
    pixels = pixels if pixels.is_floating_point() else pixels.float()
    return pixels / 16.0 * 2.0 - 1.0


def to_images(x: torch.Tensor) -> torch.Tensor:
    """Maps samples from the model's data space back to images in ``[0, 1]``.

    Args:
        x: Tensor in data space (nominally ``[-1, 1]``), any shape.

    Returns:
        ``(x + 1) / 2`` clamped to ``[0, 1]``.
    """
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def _timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time steps.

    Args:
        t: Tensor of shape ``(B,)`` with time values.
        dim: Embedding dimension (must be even).
        max_period: Controls the lowest frequency of the embedding.

    Returns:
        Tensor of shape ``(B, dim)`` laid out as ``[cos(t * f), sin(t * f)]``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _ResBlock(nn.Module):
    """Pre-activation residual block with an additive time conditioning.

    Args:
        in_ch: Number of input channels.
        out_ch: Number of output channels.
        emb_dim: Dimension of the time embedding.
        groups: Number of GroupNorm groups.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Applies the block.

        Args:
            x: Feature map of shape ``(B, in_ch, H, W)``.
            emb: Time embedding of shape ``(B, emb_dim)`` (already activated).

        Returns:
            Feature map of shape ``(B, out_ch, H, W)``.
        """
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class DigitsUNet(nn.Module):
    """Tiny two-level U-Net predicting the noise ``eps`` for 8x8 digits.

    Layout (``C = channels``)::

        conv_in 1->C                         8x8
        down1   ResBlock C->C                8x8   (skip)
        pool    strided conv C->C            4x4
        down2   ResBlock C->2C               4x4
        mid     ResBlock 2C->2C              4x4
        up2     ResBlock 2C->2C              4x4
        upsample nearest + conv 2C->2C       8x8
        up1     ResBlock (2C + C)->C         8x8   (concat skip)
        out     GroupNorm, SiLU, conv C->1   8x8

    Every residual block is conditioned on a sinusoidal embedding of the time
    step passed through a two-layer MLP.

    Args:
        channels: Base channel width ``C``.
        emb_dim: Width of the time-embedding MLP.
        freq_dim: Dimension of the sinusoidal features fed to the MLP.
    """

    def __init__(self, channels: int = 64, emb_dim: int = 128, freq_dim: int = 64) -> None:
        super().__init__()
        c = channels
        self.channels = channels
        self.freq_dim = freq_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(freq_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )
        self.conv_in = nn.Conv2d(1, c, 3, padding=1)
        self.down1 = _ResBlock(c, c, emb_dim)
        self.pool = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.down2 = _ResBlock(c, 2 * c, emb_dim)
        self.mid = _ResBlock(2 * c, 2 * c, emb_dim)
        self.up2 = _ResBlock(2 * c, 2 * c, emb_dim)
        self.upconv = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.up1 = _ResBlock(3 * c, c, emb_dim)
        self.norm_out = nn.GroupNorm(8, c)
        self.conv_out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: Union[torch.Tensor, float]) -> torch.Tensor:
        """Predicts the noise contained in ``x`` at discrete time ``t``.

        Args:
            x: Noisy images of shape ``(B, 1, 8, 8)`` in data space.
            t: Discrete-time input in ``[0, 999]``: a Python number, a scalar
                tensor, or a tensor of shape ``(B,)``.

        Returns:
            The predicted noise ``eps``, same shape and dtype as ``x``.
        """
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        t = t.reshape(batch)
        emb = self.time_mlp(_timestep_embedding(t, self.freq_dim).to(x.dtype))
        emb = F.silu(emb)

        h = self.conv_in(x)
        h1 = self.down1(h, emb)
        h = self.pool(h1)
        h = self.down2(h, emb)
        h = self.mid(h, emb)
        h = self.up2(h, emb)
        h = self.upconv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        h = self.up1(torch.cat([h, h1], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def weights_path() -> Path:
    """Returns the path of the packaged digits weights file."""
    return Path(__file__).resolve().parent / "weights" / _WEIGHTS_FILE


def load_digits_model(
    device: Optional[Union[str, torch.device]] = None,
    dtype: torch.dtype = torch.float32,
) -> DigitsUNet:
    """Loads the pretrained digits epsilon network.

    The weights are stored as a float16 ``state_dict`` together with the
    constructor arguments; they are cast to ``dtype`` on load.

    Args:
        device: Device to place the model on (default: CPU).
        dtype: Floating point dtype of the returned model's parameters.

    Returns:
        A :class:`DigitsUNet` in eval mode with ``requires_grad`` disabled on
        all parameters.
    """
    payload = torch.load(weights_path(), map_location="cpu", weights_only=True)
    model = DigitsUNet(**payload["config"])
    state = {k: v.to(torch.float32) for k, v in payload["state_dict"].items()}
    model.load_state_dict(state)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
