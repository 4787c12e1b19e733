"""One registry of every attack and defense: name, family, knowledge, paper, ATLAS id.

It drives both the CLI (``advkit attack NAME`` looks names up here) and ``advkit list``.
ATLAS ids follow MITRE ATLAS 5.x (techniques AML.T*, mitigations AML.M*).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from advkit.errors import AdvkitError


@dataclass(frozen=True)
class Entry:
    name: str
    family: str
    knowledge: str
    paper: str
    atlas: str
    summary: str
    factory: Callable[..., Any]


REGISTRY: dict[str, Entry] = {}
T = TypeVar("T")


def register(name: str, *, family: str, knowledge: str, paper: str, atlas: str, summary: str) -> Callable[[T], T]:
    """Class decorator adding an attack or defense to the registry under ``name``."""

    def wrap(obj: T) -> T:
        if name in REGISTRY:
            raise RuntimeError(f"duplicate registry name {name!r}")
        REGISTRY[name] = Entry(name, family, knowledge, paper, atlas, summary, obj)  # type: ignore[arg-type]
        return obj

    return wrap


def lookup(name: str, family: str | None = None) -> Entry:
    """The entry called ``name`` (optionally of one family), or a one-line error listing the known ones."""
    _load_all()
    entry = REGISTRY.get(name.lower())
    if entry is None or (family is not None and entry.family != family):
        known = sorted(n for n, e in REGISTRY.items() if family is None or e.family == family)
        raise AdvkitError(f"unknown {family or 'method'} {name!r}; known: {', '.join(known)}")
    return entry


def settings_taken(name: str) -> set[str]:
    """The settings (constructor keywords) the evasion attack called ``name`` takes."""
    import inspect

    entry = lookup(name, "evasion")
    return {k for k in inspect.signature(entry.factory.__init__).parameters if k not in ("self", "threat")}


def check_settings_apply(names: list[str], settings: dict[str, Any]) -> None:
    """Each setting must be taken by at least one attack of the list (one line otherwise).

    ``advkit attack pgd square --max-queries 1000`` gives Square its budget and PGD
    nothing; ``advkit attack fgsm pgd --max-queries 1000`` is an error.
    """
    taken = {name: settings_taken(name) for name in names}
    for key in settings:
        if not any(key in accepted for accepted in taken.values()):
            takers = sorted(n for n, e in REGISTRY.items() if e.family == "evasion" and key in settings_taken(n))
            option = "--" + key.replace("_", "-")
            raise AdvkitError(
                f"{option} applies to none of {', '.join(names)}; it is taken by {', '.join(takers) or 'no attack'}"
            )


def build_evasion(name: str, threat: Any, settings: dict[str, Any], *, strict: bool = True, **fixed: Any) -> Any:
    """An evasion attack by name with the settings its constructor takes.

    ``strict``: a setting the attack does not take is an error (the CLI's ``--steps`` on
    FGSM); otherwise it is dropped (an audit's shared ``steps`` for every attack).
    """
    import inspect

    entry = lookup(name, "evasion")
    accepted = inspect.signature(entry.factory.__init__).parameters
    unknown = [k for k in settings if k not in accepted]
    if unknown and strict:
        raise AdvkitError(f"{entry.name} does not take --{unknown[0].replace('_', '-')}")
    return entry.factory(threat, **{k: v for k, v in settings.items() if k in accepted}, **fixed)


# MITRE ATLAS 5.x names of the ids the entries carry (techniques AML.T*, mitigations AML.M*).
ATLAS_NAMES = {
    "AML.T0015": "Evade AI Model",
    "AML.T0043.000": "Craft Adversarial Data: White-Box Optimization",
    "AML.T0043.001": "Craft Adversarial Data: Black-Box Optimization",
    "AML.T0043.002": "Craft Adversarial Data: Black-Box Transfer",
    "AML.T0043.004": "Craft Adversarial Data: Insert Backdoor Trigger",
    "AML.T0020": "Poison Training Data",
    "AML.T0018.000": "Manipulate AI Model: Poison AI Model",
    "AML.T0018.001": "Manipulate AI Model: Modify AI Model Architecture",
    "AML.T0010.003": "AI Supply Chain Compromise: Model",
    "AML.T0024.000": "Exfiltration via AI Inference API: Infer Training Data Membership",
    "AML.T0024.002": "Exfiltration via AI Inference API: Extract AI Model",
    "AML.T0011.000": "User Execution: Unsafe AI Artifacts",
    "AML.M0003": "Model Hardening",
    "AML.M0015": "Adversarial Input Detection",
    "AML.M0007": "Sanitize Training Data",
    "AML.M0008": "Validate AI Model",
    "AML.M0014": "Verify AI Artifacts",
}
# Every attack of a family also is this technique (an evasion attack evades the model).
FAMILY_ATLAS = {"evasion": ("AML.T0015",)}


def atlas_ids(name: str) -> list[dict[str, str]]:
    """``[{id, name}]`` of the registered method ``name``: its family's ids, then its own."""
    entry = lookup(name)
    ids = [*FAMILY_ATLAS.get(entry.family, ()), *(part.strip() for part in entry.atlas.split(",") if part.strip())]
    return [{"id": atlas_id, "name": ATLAS_NAMES.get(atlas_id, "")} for atlas_id in dict.fromkeys(ids)]


def entries() -> list[Entry]:
    _load_all()
    return sorted(REGISTRY.values(), key=lambda e: (e.family, e.name))


# The modules whose ``@register`` decorators fill the registry, imported by name the first
# time the registry is read (plugin discovery, like entry points). Names, not import
# statements: each of them imports this module for ``register``, so importing them back
# would make the registry part of an import cycle. tests/test_layout.py checks that this
# lists every module that calls ``register``.
PLUGIN_MODULES: tuple[str, ...] = (
    "advkit.attacks.evasion.apgd",
    "advkit.attacks.evasion.autoattack",
    "advkit.attacks.evasion.fab",
    "advkit.attacks.evasion.fgsm",
    "advkit.attacks.evasion.hopskipjump",
    "advkit.attacks.evasion.nes",
    "advkit.attacks.evasion.one_pixel",
    "advkit.attacks.evasion.pgd",
    "advkit.attacks.evasion.square",
    "advkit.attacks.extraction",
    "advkit.attacks.poisoning.backdoor",
    "advkit.attacks.poisoning.clean_label",
    "advkit.attacks.poisoning.gradient_matching",
    "advkit.attacks.poisoning.label_flip",
    "advkit.attacks.poisoning.pacd",
    "advkit.attacks.poisoning.poison_frogs",
    "advkit.attacks.poisoning.steinhardt",
    "advkit.attacks.poisoning.trojannet",
    "advkit.certify.smoothing",
    "advkit.certify.training",
    "advkit.defenses.adversarial_training",
    "advkit.defenses.backdoor.fine_pruning",
    "advkit.defenses.backdoor.k_arm",
    "advkit.defenses.backdoor.mitigation",
    "advkit.defenses.backdoor.mode_connectivity",
    "advkit.defenses.backdoor.neural_cleanse",
    "advkit.defenses.backdoor.shortcut",
    "advkit.defenses.data.activation_clustering",
    "advkit.defenses.data.sanitize",
    "advkit.defenses.data.spectral",
    "advkit.defenses.data.strip",
    "advkit.defenses.input.magnet",
)


def _load_all() -> None:
    """Import every plugin module, which runs its ``@register`` decorators."""
    for module in PLUGIN_MODULES:
        importlib.import_module(module)
