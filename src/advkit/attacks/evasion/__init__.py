"""Test-time evasion attacks; each is ``attack(model, x, y, *, target, generator)``."""

from advkit.attacks.evasion.base import EvasionAttack, project
from advkit.attacks.evasion.fgsm import FGSM
from advkit.attacks.evasion.pgd import BIM, ILLC, PGD

__all__ = ["BIM", "FGSM", "ILLC", "PGD", "EvasionAttack", "project"]
