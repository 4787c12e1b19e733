"""Test-time evasion attacks; each is ``attack(model, x, y, *, target, generator)``."""

from advkit.attacks.evasion.apgd import APGD, APGDDLR, APGDTargeted
from advkit.attacks.evasion.autoattack import AutoAttack
from advkit.attacks.evasion.base import EvasionAttack, project
from advkit.attacks.evasion.fab import FAB
from advkit.attacks.evasion.fgsm import FGSM
from advkit.attacks.evasion.hopskipjump import HopSkipJump
from advkit.attacks.evasion.nes import NES
from advkit.attacks.evasion.one_pixel import OnePixel
from advkit.attacks.evasion.pgd import BIM, ILLC, PGD
from advkit.attacks.evasion.square import SquareAttack

__all__ = ["APGD", "APGDDLR", "APGDTargeted", "AutoAttack", "FAB", "BIM", "FGSM", "HopSkipJump", "ILLC", "NES", "OnePixel", "PGD", "EvasionAttack", "SquareAttack", "project"]
