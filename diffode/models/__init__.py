"""Model wrappers: parameterizations, time inputs, guidance and analytic models."""

from diffode.models.analytic import AnalyticPredictor, GaussianMixture
from diffode.models.corrections import CorrectedData, dynamic_thresholding
from diffode.models.guidance import ClassifierFreeGuidance, ClassifierGuidance, concat_conditions
from diffode.models.parameterizations import (
    Data,
    Noise,
    Parameterization,
    Score,
    Velocity,
    get_parameterization,
)
from diffode.models.predictor import Predictor
from diffode.models.wrapper import ContinuousTime, DiscreteTime, ModelWrapper, wrap

__all__ = [
    "AnalyticPredictor", "ClassifierFreeGuidance", "CorrectedData", "ClassifierGuidance", "ContinuousTime", "Data",
    "DiscreteTime", "GaussianMixture", "ModelWrapper", "Noise", "Parameterization", "Predictor",
    "Score", "Velocity", "concat_conditions", "dynamic_thresholding", "get_parameterization", "wrap",
]
