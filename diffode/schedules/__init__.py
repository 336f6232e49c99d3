"""Noise schedules: alpha, sigma, the half log-SNR lambda and the SDE view."""

from diffode.schedules.base import NoiseSchedule, TimePoint, VESchedule, VPSchedule
from diffode.schedules.flow import FlowMatching
from diffode.schedules.subvp import SubVP
from diffode.schedules.ve import EDM, VE
from diffode.schedules.vp import CosineVP, DiscreteVP, LinearVP

__all__ = ["EDM", "VE", "CosineVP", "DiscreteVP", "FlowMatching", "LinearVP", "NoiseSchedule", "SubVP", "TimePoint",
           "VESchedule", "VPSchedule"]
