"""Model wrappers: parameterizations, time inputs, guidance and analytic models."""

from diffode.models.analytic import AnalyticPredictor, GaussianMixture
from diffode.models.guidance import ClassifierFreeGuidance, ClassifierGuidance, concat_conditions
from diffode.models.parameterizations import (
    Data,
    Noise,
    Parameterization,
    Scaled,
    Score,
    Velocity,
    get_parameterization,
)
from diffode.models.predictor import Predictor
from diffode.models.wrapper import ContinuousTime, DiscreteTime, ModelWrapper, wrap

__all__ = [
    "AnalyticPredictor", "ClassifierFreeGuidance", "ClassifierGuidance", "ContinuousTime", "Data",
    "DiscreteTime", "GaussianMixture", "ModelWrapper", "Noise", "Parameterization", "Predictor", "Scaled",
    "Score", "Velocity", "concat_conditions", "get_parameterization", "wrap",
]
