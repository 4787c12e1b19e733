"""AutoAttack: an ensemble of parameter-free attacks, each run on the rows still standing.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020. The standard version runs, in order, APGD-CE
(100 iterations, 1 restart), APGD-T (targeted DLR, the top 9 other classes, 1 restart
each), FAB-T (Croce & Hein, ICML 2020; 9 targets, 1 restart) and Square (Andriushchenko
et al., ECCV 2020; 5,000 queries, ``p_init = 0.8``). Each attack sees only the rows the
previous ones left correctly classified, and a row counts as broken by the first attack
that breaks it (the per-row worst case). ``version="plus"`` adds APGD-DLR and untargeted
FAB with 5 restarts each (as in the reference); ``version="fast"`` runs APGD-CE and
APGD-T only; ``components=[...]`` picks any sequence of ``apgd-ce``, ``apgd-dlr``,
``apgd-t``, ``fab``, ``fab-t``, ``square``.

Design: an evasion attack's :meth:`run` sees one batch through a knowledge-limited view,
but AutoAttack's components are whole attacks with their own verification (and Square
needs a score view of its own). So AutoAttack overrides ``__call__``: it validates the
inputs like the base class, predicts the clean rows once, calls each component as an
ordinary attack on the handle with the standing rows (so every component's success is
already re-checked on the model by its base class), keeps each broken row's verified
adversarial input (a row left standing keeps the first component's candidate, inside
the budget), and re-verifies the assembled batch with one more forward pass. The
result's ``queries`` is None (a white-box evaluation); ``params["breakdown"]`` lists
per component the rows attacked and broken, the robust accuracy after it, its seconds
and, for Square, its queries. Components are built at call time from the attack's
threat, so a copy with another budget (the eps=0 sanity check) runs at that budget; at
eps = 0 nothing can move and no component runs.

Simplifications: advkit's Square rescales its window schedule to the query budget
(the reference's AutoAttack keeps the 10,000-iteration schedule for 5,000 queries);
no randomized-defense (``rand``) version; untargeted goal only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from advkit.attacks.evasion.apgd import APGD, APGDDLR, TARGET_CLASSES, APGDTargeted
from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import CleanForward, EvasionAttack, Progress, goal_reached
from advkit.attacks.evasion.fab import FAB
from advkit.attacks.evasion.square import SquareAttack
from advkit.core import AttackResult, ModelHandle, ModelView, Threat
from advkit.errors import AdvkitError
from advkit.metrics import perturbation_norms
from advkit.registry import register

COMPONENTS: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "fast": ("apgd-ce", "apgd-t"),
}
SQUARE_P_INIT = 0.8  # AutoAttack's Square setting


@register(
    "autoattack",
    family="evasion",
    knowledge="white",
    paper="Croce & Hein. Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks. ICML 2020",
    atlas="AML.T0043.000",
    summary="APGD-CE, APGD-T, FAB-T and Square in sequence on the rows still standing (per-row worst case)",
)
class AutoAttack(EvasionAttack):
    """AutoAttack's standard (or ``plus``/``fast``/custom) ensemble; ``steps`` per gradient attack.

    ``target_classes`` (9, the paper's) is how many of the top other classes APGD-T and
    FAB-T each try; fewer is cheaper and can only leave more rows standing.
    """

    name = "autoattack"
    goals = ("untargeted",)

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        version: str = "standard",
        components: Sequence[str] | None = None,
        steps: int = 100,
        max_queries: int = 5000,
        target_classes: int = TARGET_CLASSES,
        batch_size: int = 500,
    ) -> None:
        super().__init__(threat, batch_size=batch_size)
        if components is not None:
            chosen = tuple(str(c).lower() for c in components)
            unknown = [c for c in chosen if c not in COMPONENTS]
            if unknown or not chosen or len(set(chosen)) != len(chosen):
                raise AdvkitError(
                    f"{self.name}: components must be distinct names among {', '.join(COMPONENTS)}; got {', '.join(chosen) or 'none'}"
                )
            version = "custom"
        else:
            version = str(version).lower()
            if version not in VERSIONS:
                raise AdvkitError(f"{self.name}: version must be one of {', '.join(VERSIONS)}; got {version!r}")
            chosen = VERSIONS[version]
        if steps < 1:
            raise AdvkitError(f"{self.name}: steps must be >= 1; got {steps}")
        if max_queries < 1:
            raise AdvkitError(f"--max-queries must be >= 1; got {max_queries}")
        if target_classes < 1:
            raise AdvkitError(f"{self.name}: target_classes must be >= 1; got {target_classes}")
        self.target_classes = target_classes
        self.version = version
        self.components = chosen
        self.steps = steps
        self.max_queries = max_queries

    def params(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "components": list(self.components),
            "steps": self.steps,
            "max_queries": self.max_queries,
            "target_classes": self.target_classes,
            "restarts": self._restarts("apgd-ce"),
        }

    def _restarts(self, name: str) -> int:
        return 5 if self.version == "plus" and name in ("apgd-ce", "apgd-dlr", "fab") else 1

    def component(self, name: str, threat: Threat) -> EvasionAttack:
        """The attack object of one component at the given threat."""
        common = {"batch_size": self.batch_size}
        if name == "apgd-ce":
            return APGD(threat, steps=self.steps, restarts=self._restarts(name), **common)
        if name == "apgd-dlr":
            return APGDDLR(threat, steps=self.steps, restarts=self._restarts(name), **common)
        if name == "apgd-t":
            return APGDTargeted(threat, steps=self.steps, restarts=1, target_classes=self.target_classes, **common)
        if name == "fab":
            return FAB(threat, steps=self.steps, restarts=self._restarts(name), targeted=False, **common)
        if name == "fab-t":
            return FAB(threat, steps=self.steps, restarts=1, targeted=True, target_classes=self.target_classes, **common)
        if name == "square":
            return SquareAttack(threat, max_queries=self.max_queries, p_init=SQUARE_P_INIT, **common)
        raise AdvkitError(f"{self.name}: unknown component {name!r}")

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: CleanForward,
    ) -> tuple[Tensor, Tensor | None]:
        raise AdvkitError("autoattack runs whole attacks on the model handle: call the attack object, not run()")

    def __call__(
        self,
        model: ModelHandle | nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        target: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        rows: Tensor | None = None,
    ) -> AttackResult:
        if target is not None:
            raise AdvkitError(f"targets were given but the goal is {self.threat.goal}; {self.name} evaluates the untargeted goal")
        handle, threat, x, y, _, generator = self.prepare(model, x, y, None, generator)
        ids = self.row_random(generator, rows, x).rows  # checked ids; each component keys its own streams by them
        start = time.perf_counter()
        breakdown: list[dict[str, Any]] = []
        every_row = not self.keep_clean_successes  # on_every_row(): misclassified rows get a candidate too
        with handle.eval_mode():
            clean_logits = handle.predict_logits(x, self.batch_size)
            standing = torch.ones_like(y, dtype=torch.bool) if every_row else clean_logits.argmax(1) == y
            answered = ~standing
            x_adv = x.clone()
            for name in self.components if threat.eps > 0 else ():
                rows = standing.nonzero().squeeze(1)
                entry: dict[str, Any] = {"attack": name, "rows_attacked": int(rows.numel()), "rows_broken": 0, "seconds": 0.0}
                if rows.numel():
                    attack = self.component(name, threat)
                    attack = attack.on_every_row() if every_row else attack
                    result = attack(handle, x[rows], y[rows], generator=generator, progress=progress, rows=ids[rows.cpu()])
                    broken = result.success.to(rows.device)
                    if not every_row:
                        broken &= result.clean_correct.to(rows.device)
                    # A broken row keeps its breaking input; a standing row keeps its first candidate.
                    take = broken | ~answered[rows]
                    x_adv[rows[take]] = result.x_adv[take].to(x_adv.device)
                    answered[rows] = True
                    standing[rows[broken]] = False
                    entry.update(rows_broken=int(broken.sum()), seconds=result.seconds)
                    if result.queries is not None:
                        entry["queries"] = int(result.queries.sum())
                entry["robust_accuracy"] = float(standing.float().mean()) if standing.numel() else 0.0
                breakdown.append(entry)
            adv_logits = handle.predict_logits(x_adv, self.batch_size)
        seconds = time.perf_counter() - start
        return AttackResult(
            attack=self.name,
            threat=threat,
            x_adv=x_adv,
            y=y,
            clean_pred=clean_logits.argmax(1),
            adv_pred=adv_logits.argmax(1),
            success=goal_reached(adv_logits, y, None, threat),
            perturbation=perturbation_norms(x_adv - x, threat.norm),
            seconds=seconds,
            num_classes=handle.num_classes,
            target=None,
            queries=None,
            params={**self.params(), "breakdown": breakdown},
        )
