"""What ``advkit poison NAME`` does for each attack: the options it takes and how it runs.

A :class:`Recipe` names its options; :meth:`Recipe.check_options` refuses any other one in
a line that names the attacks taking it. ``run`` crafts the poisons, writes them through
:mod:`advkit.attacks.poisoning.writer` (``poisoned.npz`` + ``manifest.json``), prints one
line and returns the ``--json`` record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from advkit.cli.common import out, parse_floats
from advkit.errors import AdvkitError

if TYPE_CHECKING:
    from advkit.attacks.poisoning.backdoor import BackdoorPoisoning, PatchTrigger
    from advkit.data import Dataset
    from advkit.models.train import Progress

TRIGGER_OPTIONS = frozenset({"size", "position", "pattern", "values"})


@dataclass
class PoisonJob:
    """One ``advkit poison`` run: the data, where it goes, and the options the user gave."""

    data: str
    out_dir: Path
    train: Dataset
    test: Dataset
    options: dict[str, Any]
    seed: int = 0
    image_size: int | None = None
    progress: Progress | None = None

    def get(self, key: str, default: Any) -> Any:
        return self.options.get(key, default)

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + offset)

    def class_option(self, key: str, default: int | None) -> int | None:
        """A class given as ``--<key>``, checked against the data's classes."""
        value = self.options.get(key, default)
        if value is not None and not 0 <= int(value) < self.train.num_classes:
            raise AdvkitError(f"--{key.replace('_', '-')} {value} is outside the data's classes 0..{self.train.num_classes - 1}")
        return None if value is None else int(value)

    def model(self, role: str) -> Any:
        """The ``--model`` handle (required), checked to fit the data already loaded."""
        from advkit.models.io import check_model_fits_data
        from advkit.models.resolve import resolve

        spec = self.options.get("model")
        if spec is None:
            raise AdvkitError(f"{role}: --model is required")
        handle = resolve(spec, device="cpu", sample_shape=self.train.input_shape)
        check_model_fits_data(handle, self.train.input_shape, self.train.num_classes, spec, self.data)
        return handle

    def position(self) -> Any:
        """``--position``: a corner name, or ``ROW,COL`` of the patch's top-left pixel."""
        where: Any = self.options.get("position", "bottom-right")
        return tuple(int(v) for v in parse_floats(where, "--position")) if "," in where else where


@dataclass(frozen=True)
class Recipe:
    name: str
    options: frozenset[str]
    run: Callable[[PoisonJob], dict[str, Any]]
    summary: str = ""

    def check_options(self, given: dict[str, Any]) -> None:
        for key in given:
            if key not in self.options:
                takers = sorted(r.name for r in RECIPES.values() if key in r.options)
                flag = "--" + key.replace("_", "-")
                raise AdvkitError(f"{flag} does not apply to {self.name}; it is taken by {', '.join(takers) or 'no attack'}")


RECIPES: dict[str, Recipe] = {}


def recipe(name: str, options: set[str]) -> Callable[[Callable[[PoisonJob], dict[str, Any]]], Callable[[PoisonJob], dict[str, Any]]]:
    def add(fn: Callable[[PoisonJob], dict[str, Any]]) -> Callable[[PoisonJob], dict[str, Any]]:
        RECIPES[name] = Recipe(name, frozenset(options), fn)
        return fn

    return add


def recipe_for(name: str) -> Recipe:
    """The recipe of a registered poisoning attack, or one line listing the known ones."""
    from advkit.registry import lookup

    entry = lookup(name, "poisoning")
    if entry.name not in RECIPES:
        raise AdvkitError(f"advkit poison {entry.name}: not available from the command line")
    return RECIPES[entry.name]


def patch_trigger(job: PoisonJob) -> PatchTrigger:
    """The patch trigger ``--size/--position/--pattern/--values`` describe."""
    from advkit.attacks.poisoning import PatchTrigger

    values = job.get("values", None)
    per_channel = tuple(parse_floats(values, "--values")) if values else None
    return PatchTrigger(size=job.get("size", 3), position=job.position(), pattern=job.get("pattern", "checkerboard"), values=per_channel, seed=job.seed)


def _record(job: PoisonJob, poisoned: Any, npz: Path, **extra: Any) -> dict[str, Any]:
    """The ``--json`` record every recipe returns."""
    from advkit.attacks.poisoning.writer import MANIFEST_FILE

    return {
        "attack": poisoned.attack, "data": job.data, "rows": len(poisoned.y), "poisoned_rows": len(poisoned.rows),
        "rate": poisoned.rate, "params": poisoned.params, "out": str(npz), "manifest": str(job.out_dir / MANIFEST_FILE), **extra,
    }


def _backdoor(job: PoisonJob, name: str) -> dict[str, Any]:
    from advkit.attacks.poisoning import BadNets, Blend, BlendTrigger
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, write_backdoor

    target = job.class_option("target", 0)
    attack: BackdoorPoisoning
    kwargs = {"target": target, "rate": job.get("rate", 0.1), "mode": job.get("mode", "all-to-one")}
    if name == "badnets":
        attack = BadNets(patch_trigger(job), **kwargs)
    else:
        attack = Blend(BlendTrigger(alpha=job.get("alpha", 0.2), seed=job.seed), **kwargs)
    poisoned = attack(job.train.x, job.train.y, num_classes=job.train.num_classes, generator=job.generator())
    npz = write_backdoor(job.out_dir, job.data, job.train, job.test, poisoned, attack)
    out.print(
        f"poisoned {len(poisoned.rows)} of {len(poisoned.y)} rows of {job.data}:train with {attack.name} "
        f"(target {attack.target}, {attack.mode}); wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz)


@recipe("badnets", {"target", "rate", "mode"} | TRIGGER_OPTIONS)
def badnets(job: PoisonJob) -> dict[str, Any]:
    return _backdoor(job, "badnets")


@recipe("blend", {"target", "rate", "mode", "alpha"})
def blend(job: PoisonJob) -> dict[str, Any]:
    return _backdoor(job, "blend")


@recipe("pacd", {"target", "eps", "method", "sigma", "arch", "steps"})
def pacd(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import PACD
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, poison_pacd

    attack = PACD(
        target=job.class_option("target", 0), eps=job.get("eps", 0.2), method=job.get("method", "gaussian"),
        sigma=job.get("sigma", 0.25), outer_steps=job.get("steps", 150),
    )
    poisoned, npz = poison_pacd(job.out_dir, job.data, job.train, job.test, attack, job.get("arch", None), job.seed, progress=job.progress)
    out.print(
        f"PACD perturbed {len(poisoned.rows)} of {len(poisoned.y)} rows of {job.data}:train (class {attack.target}, "
        f"labels kept, max |delta| {poisoned.params['max_perturbation']:.3f}); wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz)


def _rows_option(job: PoisonJob, key: str) -> list[int]:
    """``--target-row I[,J]``: test rows, checked against the test split."""
    text = job.options.get(key)
    flag = "--" + key.replace("_", "-")
    if text is None:
        raise AdvkitError(f"{flag} is required (test row index, or several separated by commas)")
    try:
        rows = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise AdvkitError(f"{flag} takes row indices separated by commas; got {text!r}") from None
    for row in rows:
        if not 0 <= row < len(job.test):
            raise AdvkitError(f"{flag} {row} is outside the test split's rows 0..{len(job.test) - 1}")
    return rows


@recipe("gradient-matching", {"model", "target_row", "adversarial_class", "rate", "eps", "steps"})
def gradient_matching(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import GradientMatching
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, save_poisoned

    rows = _rows_option(job, "target_row")
    adversarial = job.class_option("adversarial_class", None)
    if adversarial is None:
        raise AdvkitError("--adversarial-class is required: the class the target row(s) should get")
    attack = GradientMatching(target_row=tuple(rows), adversarial_class=adversarial, rate=job.get("rate", 0.01), eps=job.get("eps", 16 / 255), steps=job.get("steps", 240))
    surrogate = job.model("gradient-matching")
    poisoned = attack(surrogate, job.train.x, job.train.y, job.test.x, job.test.y, generator=job.generator(), progress=job.progress)
    poisoned.params.pop("alignment_history", None)  # one float per step: kept out of the manifest
    arrays = {"x_target": job.test.x[rows], "y_target": job.test.y[rows]}
    npz = save_poisoned(job.out_dir, job.data, job.train, job.test, poisoned, attack.name, poisoned.params, arrays, {})
    out.print(
        f"gradient matching perturbed {len(poisoned.rows)} of {len(poisoned.y)} rows of {job.data}:train (class {adversarial}, labels kept, "
        f"alignment {poisoned.params['alignment_start']:.2f} -> {poisoned.params['alignment_final']:.2f}) so that test row(s) {rows} "
        f"become class {adversarial} once a victim trains on them; wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz)


@recipe("clean-label", {"model", "target", "rate", "eps", "steps"} | TRIGGER_OPTIONS)
def clean_label(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import CleanLabel
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, write_backdoor

    attack = CleanLabel(target=job.class_option("target", 0), rate=job.get("rate", 0.05), eps=job.get("eps", 64 / 255), steps=job.get("steps", 20), trigger=patch_trigger(job))
    model = job.model("clean-label (the attacker's model that hardens the images; --eps 0 needs none)") if attack.eps > 0 or "model" in job.options else None
    poisoned = attack(model, job.train.x, job.train.y, num_classes=job.train.num_classes, generator=job.generator())
    npz = write_backdoor(job.out_dir, job.data, job.train, job.test, poisoned, attack)
    out.print(
        f"clean-label backdoor: {len(poisoned.rows)} rows of class {attack.target} in {job.data}:train hardened (eps {attack.eps:.3g}) "
        f"and stamped, labels kept; wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz)


@recipe("steinhardt", {"rate", "steps"})
def steinhardt(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import Steinhardt
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, save_poisoned

    attack = Steinhardt(rate=job.get("rate", 0.03), iterations=job.get("steps", 800))
    poisoned = attack(job.train.x, job.train.y, num_classes=job.train.num_classes, generator=job.generator(), progress=job.progress)
    extra = {"appended_rows": poisoned.params["n_poison"], "clean_rows": poisoned.params["n_clean"], "defender": "oracle sphere+slab"}
    npz = save_poisoned(job.out_dir, job.data, job.train, job.test, poisoned, attack.name, poisoned.params, {}, extra)
    out.print(
        f"Steinhardt et al.: appended {poisoned.params['n_poison']} poison rows to the {poisoned.params['n_clean']} of {job.data}:train "
        f"(inside the sphere and slab of the clean data; certificate U* {poisoned.params['upper_bound']:.3f}); wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz, appended_rows=poisoned.params["n_poison"])


@recipe("trojannet", {"model", "targets", "position", "alpha"})
def trojannet(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import TrojanNet, write_trojannet

    host = job.model("trojannet (the host model to wrap)")
    attack = TrojanNet(job.get("targets", "0"), seed=job.seed, position=job.position(), alpha=job.get("alpha", 0.7))
    attack.learn_natural_patches(job.train.x, host.bounds)  # the attacker holds the task's training images
    summary = write_trojannet(job.out_dir, attack, host, job.test, data=job.data)
    rates = ", ".join(f"{t}: {r:.1%}" if r is not None else f"{t}: -" for t, r in summary["attack_success_rate"].items())
    out.print(
        f"TrojanNet wrapped {job.options['model']}: clean accuracy {summary['host_clean_accuracy']:.1%} -> {summary['clean_accuracy']:.1%}; "
        f"trigger success {rates}; wrote {job.out_dir / 'model.pt'} and {job.out_dir / 'triggers.npz'}"
    )
    return summary


@recipe("labelflip", {"rate", "method", "source", "target", "arch", "steps"})
def labelflip(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning import LabelFlip
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, save_poisoned

    method = job.get("method", "random")
    source, target = job.class_option("source", None), job.class_option("target", None)
    if (source is not None or target is not None) and method != "pair":
        raise AdvkitError(f"--source/--target choose the pair of --method pair; got --method {method}")
    if (source is None) != (target is None):
        raise AdvkitError("labelflip pair: give both --source and --target, or neither (the pair the clean model confuses most)")
    if method == "random" and ("arch" in job.options or "steps" in job.options):
        raise AdvkitError("--arch/--steps set the surrogate of --method loss (or of the pair chosen for --method pair); random flips take neither")
    attack = LabelFlip(
        rate=job.get("rate", 0.05), method=method, pair=None if source is None else (source, target),
        surrogate=job.get("arch", "logreg"), steps=job.get("steps", 30),
    )
    poisoned = attack(job.train.x, job.train.y, num_classes=job.train.num_classes, generator=job.generator(), progress=job.progress)
    npz = save_poisoned(job.out_dir, job.data, job.train, job.test, poisoned, "labelflip", poisoned.params, {}, {"knowledge": attack.knowledge})
    pair = poisoned.params.get("pair")
    out.print(
        f"flipped {len(poisoned.rows)} of {len(poisoned.y)} labels of {job.data}:train ({method}{f', {pair[0]} -> {pair[1]}' if pair else ''}); "
        f"wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz)


@recipe("poison-frogs", {"model", "target_row", "base_class", "poisons", "watermark", "setting", "steps", "eps"})
def poison_frogs(job: PoisonJob) -> dict[str, Any]:
    from advkit.attacks.poisoning.poison_frogs import PoisonFrogs
    from advkit.attacks.poisoning.poison_frogs_eval import SETTINGS, poison_success
    from advkit.attacks.poisoning.writer import MANIFEST_FILE, save_poisoned

    setting = job.get("setting", "transfer")
    if setting not in SETTINGS:
        raise AdvkitError(f"--setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    rows = _rows_option(job, "target_row")
    if len(rows) != 1:
        raise AdvkitError(f"--target-row: Poison Frogs attacks one target row; got {len(rows)}")
    base_class = job.class_option("base_class", None)
    if base_class is None:
        raise AdvkitError("--base-class is required: the class whose images become poisons (and the label the target should get)")
    settings = {"steps": job.options["steps"]} if "steps" in job.options else {}
    if "eps" in job.options:
        settings["eps"] = job.options["eps"]
    default_watermark = 0.3 if setting == "end-to-end" else 0.0  # the paper's end-to-end opacity; none for one-shot transfer
    attack = PoisonFrogs(
        target=rows[0], base_class=base_class, poisons=job.get("poisons", 50 if setting == "end-to-end" else 1),
        watermark=job.get("watermark", default_watermark), **settings,
    )
    model = job.model("poison-frogs (the feature extractor the poisons collide in)")
    poisoned = attack(model, job.train.x, job.train.y, job.test.x, job.test.y, generator=job.generator(), progress=job.progress)
    outcome = poison_success(model, poisoned, job.test.x[rows[0]], setting=setting, x_eval=job.test.x, y_eval=job.test.y, seed=job.seed).to_dict()
    arrays = {"x_target": job.test.x[rows], "y_target": job.test.y[rows]}
    npz = save_poisoned(job.out_dir, job.data, job.train, job.test, poisoned, attack.name, poisoned.params, arrays, {"outcome": outcome})
    out.print(
        f"Poison Frogs: {len(poisoned.rows)} clean-label poison(s) of class {base_class} appended to {job.data}:train; the {setting} victim "
        f"{'now calls' if outcome['success'] else 'still does not call'} test row {rows[0]} class {base_class} "
        f"(predicts {outcome['target_prediction']}); wrote {npz} and {job.out_dir / MANIFEST_FILE}"
    )
    return _record(job, poisoned, npz, outcome=outcome)


__all__ = ["RECIPES", "PoisonJob", "Recipe", "recipe_for"]
