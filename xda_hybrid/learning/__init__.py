"""The learning layer: inversion networks trained on the 4DVAR cost, baselines and joint dynamics.

Works on tensors only (no xarray): observations are
:class:`~xda_hybrid.observation.Observations`, states ``(batch, channel, *space)``.
"""
from .checkpoints import load_checkpoint, save_checkpoint
from .cycling import (
    CycleResult,
    background_inv_var,
    cycle,
    cycled_fourdvar,
    cycled_network,
    cycled_training_data,
    forecast,
)
from .data import TrainingData
from .dynamics import NeuralLorenz96
from .generative import GenerativeInversion, generative_network, sample, train_generative
from .inversion import InversionNetwork
from .methods import Over4DVarResult, first_guess, hybrid, over4dvar, predict
from .networks import CircularCNN1d, UNet2d
from .training import TrainResult, evaluate_obs_cost, fit_supervised, train

__all__ = [
    "CircularCNN1d",
    "CycleResult",
    "GenerativeInversion",
    "NeuralLorenz96",
    "InversionNetwork",
    "Over4DVarResult",
    "TrainResult",
    "TrainingData",
    "UNet2d",
    "background_inv_var",
    "cycle",
    "cycled_fourdvar",
    "cycled_network",
    "cycled_training_data",
    "evaluate_obs_cost",
    "first_guess",
    "forecast",
    "generative_network",
    "fit_supervised",
    "hybrid",
    "load_checkpoint",
    "over4dvar",
    "predict",
    "sample",
    "save_checkpoint",
    "train",
    "train_generative",
]
