"""Models: architectures, the zoo, safe I/O, spec resolution and the one training loop.

``load_model(spec)`` here (and as ``advkit.load_model``) is
:func:`advkit.models.resolve.resolve`: ``zoo:NAME`` or a model file. (It is not
exported as ``resolve``, which would hide the ``advkit.models.resolve`` module.)
"""

from advkit.models.architectures import ARCHITECTURES, build
from advkit.models.io import save_model
from advkit.models.resolve import model_file
from advkit.models.resolve import resolve as load_model
from advkit.models.train import CrossEntropy, TrainConfig, fit
from advkit.models.zoo import ZOO, pretrained

__all__ = [
    "ARCHITECTURES",
    "ZOO",
    "CrossEntropy",
    "TrainConfig",
    "build",
    "fit",
    "load_model",
    "model_file",
    "pretrained",
    "save_model",
]
