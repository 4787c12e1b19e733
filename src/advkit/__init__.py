"""advkit: audit and harden PyTorch image classifiers against adversarial machine learning.

The public API is importable from here and loaded lazily (PEP 562): ``import advkit``
imports nothing heavy, and ``advkit.PGD`` imports the evasion attacks on first use.

    import advkit

    model = advkit.load_model("zoo:digits-cnn")
    data = advkit.load_dataset("digits", split="test", limit=64)
    result = advkit.PGD(advkit.Threat(eps=0.1))(model, data.x, data.y)
    report = advkit.audit()  # the default audit, run in runs/audit
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# Public name -> (module it lives in, its name there).
_EXPORTS: dict[str, tuple[str, str]] = {
    # core types
    "Threat": ("advkit.core", "Threat"),
    "ModelHandle": ("advkit.core", "ModelHandle"),
    "ModelInfo": ("advkit.core", "ModelInfo"),
    "AttackResult": ("advkit.core", "AttackResult"),
    "PoisonedData": ("advkit.core", "PoisonedData"),
    "DetectionReport": ("advkit.core", "DetectionReport"),
    "AdvkitError": ("advkit.errors", "AdvkitError"),
    # models and data
    "load_model": ("advkit.models.resolve", "resolve"),
    "save_model": ("advkit.models.io", "save_model"),
    "load_dataset": ("advkit.data", "load_dataset"),
    # evasion
    "EvasionAttack": ("advkit.attacks.evasion", "EvasionAttack"),
    "FGSM": ("advkit.attacks.evasion", "FGSM"),
    "BIM": ("advkit.attacks.evasion", "BIM"),
    "ILLC": ("advkit.attacks.evasion", "ILLC"),
    "PGD": ("advkit.attacks.evasion", "PGD"),
    "APGD": ("advkit.attacks.evasion", "APGD"),
    "APGDDLR": ("advkit.attacks.evasion", "APGDDLR"),
    "APGDTargeted": ("advkit.attacks.evasion", "APGDTargeted"),
    "AutoAttack": ("advkit.attacks.evasion", "AutoAttack"),
    "FAB": ("advkit.attacks.evasion", "FAB"),
    "SquareAttack": ("advkit.attacks.evasion", "SquareAttack"),
    "NES": ("advkit.attacks.evasion", "NES"),
    "HopSkipJump": ("advkit.attacks.evasion", "HopSkipJump"),
    "OnePixel": ("advkit.attacks.evasion", "OnePixel"),
    # model theft
    "PapernotSubstitute": ("advkit.attacks.extraction", "PapernotSubstitute"),
    "Knockoff": ("advkit.attacks.extraction", "Knockoff"),
    # poisoning
    "BadNets": ("advkit.attacks.poisoning", "BadNets"),
    "Blend": ("advkit.attacks.poisoning", "Blend"),
    "PatchTrigger": ("advkit.attacks.poisoning", "PatchTrigger"),
    "BlendTrigger": ("advkit.attacks.poisoning", "BlendTrigger"),
    "PACD": ("advkit.attacks.poisoning", "PACD"),
    # defenses
    "PGDTraining": ("advkit.defenses.adversarial_training", "PGDTraining"),
    "FastFGSMTraining": ("advkit.defenses.adversarial_training", "FastFGSMTraining"),
    "TRADESTraining": ("advkit.defenses.adversarial_training", "TRADESTraining"),
    "NeuralCleanse": ("advkit.defenses.backdoor.neural_cleanse", "NeuralCleanse"),
    "TriggerInputFilter": ("advkit.defenses.backdoor.mitigation", "TriggerInputFilter"),
    "NeuronPruning": ("advkit.defenses.backdoor.mitigation", "NeuronPruning"),
    "Unlearning": ("advkit.defenses.backdoor.mitigation", "Unlearning"),
    # certified robustness
    "Smoothed": ("advkit.certify.smoothing", "Smoothed"),
    "GaussianAugmentation": ("advkit.certify.training", "GaussianAugmentation"),
    "SmoothAdv": ("advkit.certify.training", "SmoothAdv"),
    "MACER": ("advkit.certify.training", "MACER"),
    # the audit
    "audit": ("advkit.api", "audit"),
}

__all__ = ["__version__", *_EXPORTS]


def _load(name: str) -> object:
    """The object behind a public name, importing its module."""
    module, attr = _EXPORTS[name]
    return getattr(importlib.import_module(module), attr)


class _CallableAuditPackage(types.ModuleType):
    """The class given to the ``advkit.audit`` package: calling it runs :func:`advkit.api.audit`.

    ``advkit.audit`` names both the subpackage and the function of the public API, and the
    import system sets the subpackage as the attribute whenever it is first imported, so
    the one object under that name is the package, made callable: ``advkit.audit(config)``
    runs an audit and ``advkit.audit.runner`` is still the module.
    """

    def __call__(
        self, config: object = None, out: object = "runs/audit", *, resume: bool = False, executor: object = None
    ) -> dict:
        return _load("audit")(config, out, resume=resume, executor=executor)  # type: ignore[operator]


class _Advkit(types.ModuleType):
    """The class of this module: :data:`audit` is a property (see :class:`_CallableAuditPackage`)."""

    @property
    def audit(self) -> types.ModuleType:
        """The ``advkit.audit`` package, callable as :func:`advkit.api.audit`."""
        package = importlib.import_module("advkit.audit")
        if not isinstance(package, _CallableAuditPackage):
            package.__class__ = _CallableAuditPackage
        return package

    @audit.setter
    def audit(self, value: types.ModuleType) -> None:
        """Where the import system puts the subpackage on its first import; the getter reads it back."""


sys.modules[__name__].__class__ = _Advkit


def __getattr__(name: str) -> object:
    """Import a public name's module the first time the name is asked for (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'advkit' has no attribute {name!r}")
    value = _load(name)
    globals()[name] = value  # later lookups find it directly
    return value


def __dir__() -> list[str]:
    """The module's own names and every public name, loaded or not (PEP 562)."""
    return sorted({*globals(), *_EXPORTS})
