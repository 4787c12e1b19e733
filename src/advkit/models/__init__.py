"""Models: architectures, the zoo, safe I/O and the one training loop."""

from advkit.models.architectures import ARCHITECTURES, build
from advkit.models.io import load_model, save_model
from advkit.models.train import CrossEntropy, TrainConfig, fit
from advkit.models.zoo import ZOO, pretrained

__all__ = ["ARCHITECTURES", "ZOO", "CrossEntropy", "TrainConfig", "build", "fit", "load_model", "pretrained", "save_model"]
