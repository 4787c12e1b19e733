"""Training-time attacks: backdoors and data poisoning; each returns a PoisonedData."""

from advkit.attacks.poisoning.backdoor import (
    BadNets,
    BackdoorPoisoning,
    Blend,
    BlendTrigger,
    PatchTrigger,
    backdoor_success_rate,
    stamp,
)

__all__ = ["BackdoorPoisoning", "BadNets", "Blend", "BlendTrigger", "PatchTrigger", "backdoor_success_rate", "stamp"]
