"""Model wrappers: parameterizations, time inputs, guidance and analytic models."""

from diffode.models.adapters import from_edm, from_k_diffusion
from diffode.models.analytic import AnalyticPredictor, GaussianMixture
from diffode.models.corrections import CorrectedData, dynamic_thresholding
from diffode.models.guidance import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    concat_conditions,
)
from diffode.models.parameterizations import (
    Data,
    Denoiser,
    EDMPreconditioned,
    Flow,
    Noise,
    Parameterization,
    Score,
    Velocity,
    get_parameterization,
)
from diffode.models.predictor import Predictor
from diffode.models.time_inputs import (
    ContinuousTime,
    DiscreteTime,
    EDMNoiseLevel,
    NoiseLevel,
    VESigma,
)
from diffode.models.wrapper import ModelWrapper, wrap

__all__ = [
    "AnalyticPredictor",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "ContinuousTime",
    "CorrectedData",
    "Data",
    "Denoiser",
    "DiscreteTime",
    "EDMNoiseLevel",
    "EDMPreconditioned",
    "Flow",
    "GaussianMixture",
    "ModelWrapper",
    "Noise",
    "NoiseLevel",
    "Parameterization",
    "Predictor",
    "Score",
    "VESigma",
    "Velocity",
    "concat_conditions",
    "dynamic_thresholding",
    "from_edm",
    "from_k_diffusion",
    "get_parameterization",
    "wrap",
]
