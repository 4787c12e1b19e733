"""One registry of every attack and defense: name, family, knowledge, paper, ATLAS id.

It drives both the CLI (``advkit attack NAME`` looks names up here) and ``advkit list``.
ATLAS ids follow MITRE ATLAS 5.x (techniques AML.T*, mitigations AML.M*).
"""

from __future__ import annotations

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


def entries() -> list[Entry]:
    _load_all()
    return sorted(REGISTRY.values(), key=lambda e: (e.family, e.name))


def _load_all() -> None:
    # Importing the modules runs their @register decorators.
    import advkit.attacks.evasion  # noqa: F401
    import advkit.attacks.extraction  # noqa: F401
    import advkit.attacks.poisoning  # noqa: F401
    import advkit.certify.training  # noqa: F401
    import advkit.defenses.adversarial_training  # noqa: F401
    import advkit.defenses.backdoor.mitigation  # noqa: F401
    import advkit.defenses.backdoor.neural_cleanse  # noqa: F401
