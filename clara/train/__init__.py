"""Training: losses, samplers and the Accelerate loop (`train(cfg) -> TrainResult`)."""
from .losses import class_weights, clara_loss, focal_loss, symmetric_kl, weighted_cross_entropy
from .loop import OutputDirError, TrainingError, TrainResult, run_paths, train
from .samplers import NegativeMixup, build_sampler

__all__ = [
    "train", "TrainResult", "TrainingError", "OutputDirError", "run_paths",
    "clara_loss", "focal_loss", "weighted_cross_entropy", "symmetric_kl", "class_weights",
    "build_sampler", "NegativeMixup",
]
