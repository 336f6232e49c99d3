"""Noise schedules: alpha, sigma, the half log-SNR lambda and the SDE view."""

from diffode.schedules.base import NoiseSchedule, TimePoint, VPSchedule
from diffode.schedules.vp import CosineVP, DiscreteVP, LinearVP

__all__ = ["CosineVP", "DiscreteVP", "LinearVP", "NoiseSchedule", "TimePoint", "VPSchedule"]
