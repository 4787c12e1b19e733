"""Training-time attacks: backdoors and data poisoning; each returns a PoisonedData."""

from advkit.attacks.poisoning.backdoor import (
    BackdoorPoisoning,
    BadNets,
    Blend,
    BlendTrigger,
    PatchTrigger,
    backdoor_success_rate,
    stamp,
)
from advkit.attacks.poisoning.clean_label import CleanLabel
from advkit.attacks.poisoning.gradient_matching import GradientMatching, target_success
from advkit.attacks.poisoning.label_flip import LabelFlip, flip_budget
from advkit.attacks.poisoning.pacd import PACD, soft_radius
from advkit.attacks.poisoning.poison_frogs import PoisonFrogs
from advkit.attacks.poisoning.poison_frogs_eval import poison_success
from advkit.attacks.poisoning.steinhardt import Steinhardt
from advkit.attacks.poisoning.trojannet import TrojanNet, export_torchscript, trigger_success_rate, write_trojannet

__all__ = [
    "PACD", "BackdoorPoisoning", "BadNets", "Blend", "BlendTrigger", "CleanLabel", "GradientMatching", "LabelFlip", "PatchTrigger", "PoisonFrogs", "Steinhardt", "TrojanNet",
    "backdoor_success_rate", "export_torchscript", "flip_budget", "poison_success", "soft_radius", "stamp", "target_success", "trigger_success_rate", "write_trojannet",
]
