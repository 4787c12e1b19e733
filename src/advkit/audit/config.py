"""The audit's YAML configuration: a pydantic schema with defaults that make a full audit.

Unknown keys and bad values are rejected with the dotted key and its line in the file.
``advkit audit --print-config`` writes the default configuration to start from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from advkit.errors import AdvkitError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvasionConfig(_Strict):
    """Evasion attacks run on the model and on every mitigated model."""

    attacks: list[str] = Field(default_factory=lambda: ["fgsm", "pgd", "autoattack"])
    norm: Literal["linf", "l2"] = "linf"
    eps: list[float] | None = Field(
        None, description="budgets; default from the data: greyscale 0.05-0.3, colour Linf 1/255-8/255 or L2 0.25-1.0 (RobustBench)"
    )
    goal: Literal["untargeted", "targeted", "confidence"] = "untargeted"
    steps: int = Field(10, ge=1)
    restarts: int = Field(3, ge=1)
    max_queries: int = Field(1000, ge=1, description="query budget per image of black-box attacks, also of the Square run the gradient-masking check adds")
    target_classes: int = Field(9, ge=1, description="top other classes APGD-T and FAB-T (in AutoAttack too) each target; 9 is the paper's")
    limit: int | None = Field(None, ge=1, description="attack only the first N rows")
    carry: bool = Field(True, description="sweep each attack in increasing eps, attacking only the rows the smaller eps left standing")

    @field_validator("eps")
    @classmethod
    def _eps(cls, values: list[float] | None) -> list[float] | None:
        if values is None:
            return None
        if not values:
            raise ValueError("needs at least one budget")
        for value in values:
            if not value >= 0:
                raise ValueError(f"eps must be >= 0, got {value}")
        return sorted(values)

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, names: list[str]) -> list[str]:
        from advkit.registry import lookup

        if not names:
            raise ValueError("needs at least one attack (see advkit list --family evasion)")
        for name in names:
            try:
                lookup(name, "evasion")
            except AdvkitError as exc:
                raise ValueError(str(exc)) from None
        return names


CLEAN_LABEL_RATE = 0.05
POISON_FROGS_TARGETS = 5
GRADIENT_MATCHING_TARGETS = 3  # each target retrains a victim from scratch
GRADIENT_MATCHING_RATE = 0.01  # Witches' Brew: 1% of the training rows
END_TO_END_POISONS, END_TO_END_WATERMARK = 50, 0.3  # Shafahi et al.'s end-to-end setting
ACCURACY_ATTACKS = {"labelflip": 0.05, "steinhardt": 0.03}  # poisons that lower accuracy on every class, and their default rates
TARGETED_ATTACKS = ("poison-frogs", "gradient-matching")  # chosen evaluation rows flipped, no trigger
TRIGGER_ATTACKS = ("badnets", "blend", "clean-label")  # poisoned training rows that plant a trigger
DEFAULT_RATE = 0.1
TRIGGER_FREE_MITIGATIONS = ("fine-pruning", "mode-connectivity")  # backdoor repairs from clean rows alone (no reversed trigger)


class TriggerConfig(_Strict):
    size: int = Field(3, ge=1)
    position: str | list[int] = "bottom-right"
    pattern: Literal["checkerboard", "solid", "random"] = "checkerboard"
    values: list[float] | None = None
    alpha: float = Field(0.2, gt=0, le=1)


class PoisoningConfig(_Strict):
    """One poisoning scenario: poison the train split, train a model on it.

    Backdoors (``badnets``, ``blend``, ``clean-label``) are measured by the trigger's
    success, inspected and repaired; ``labelflip`` (``method``, default loss) and
    ``steinhardt`` (its victim sanitised with sphere and slab) by the clean accuracy
    they cost against the audited model; ``poison-frogs`` and ``gradient-matching`` by the
    share of ``targets`` chosen evaluation rows they flip. ``trojannet`` poisons no data:
    it wraps the audited model with a trigger recogniser (one trigger per class of
    ``target_classes``, default ``[target]``), and Neural Cleanse inspects the wrapper.

    ``clean-label`` (Turner et al. 2019) hardens target-class rows with an Linf PGD
    perturbation of budget ``eps`` on the audited model, then stamps the patch trigger;
    labels stay. Its ``rate`` defaults to 0.05 (about half the target class of a 10-class
    set); it is all-to-one only. ``gradient-matching`` perturbs ``rate`` (0.01) of the rows
    within Linf ``eps`` (the paper's 16/255); each target gets its own victim retrained.
    ``poison-frogs`` ``setting``: ``transfer`` (one poison, last layer retrained) or
    ``end-to-end`` (``poisons`` 50 with ``watermark`` 0.3, the whole network fine-tuned).
    """

    attack: Literal["badnets", "blend", "clean-label", "labelflip", "steinhardt", "poison-frogs", "gradient-matching", "trojannet"] = "badnets"
    target: int = Field(0, ge=0)
    rate: float = Field(DEFAULT_RATE, gt=0, le=1)
    mode: Literal["all-to-one", "all-to-all"] = "all-to-one"
    trigger: TriggerConfig = Field(default_factory=TriggerConfig)
    eps: float | None = Field(None, ge=0, description="clean-label: Linf budget of the hardening perturbation (default 64/255); gradient-matching: of the poisons (16/255)")
    method: Literal["random", "pair", "loss"] | None = Field(None, description="labelflip: how the flipped rows are chosen (default loss)")
    targets: int | None = Field(None, ge=1, description="poison-frogs (default 5), gradient-matching (3): evaluation rows attacked")
    setting: Literal["transfer", "end-to-end"] | None = Field(None, description="poison-frogs: transfer learning (default) or end-to-end fine-tuning")
    poisons: int | None = Field(None, ge=1, description="poison-frogs: poisons per target (transfer 1, end-to-end 50)")
    watermark: float | None = Field(None, ge=0, lt=1, description="poison-frogs: the target's opacity in each base (transfer 0, end-to-end 0.3)")
    target_classes: list[int] | None = Field(None, min_length=1, description="trojannet: one trigger per class (default [target])")

    @model_validator(mode="after")
    def _settings_fit_the_attack(self) -> PoisoningConfig:
        own = {"method": ("labelflip",), "targets": TARGETED_ATTACKS, "setting": ("poison-frogs",), "poisons": ("poison-frogs",),
               "watermark": ("poison-frogs",), "target_classes": ("trojannet",), "eps": ("clean-label", "gradient-matching")}
        for key, attacks in own.items():
            if getattr(self, key) is not None and self.attack not in attacks:
                raise ValueError(f"{key} applies to {' and '.join(attacks)} scenarios, not {self.attack}")
        rate_given = "rate" in self.model_fields_set and self.rate != DEFAULT_RATE
        given = {"target": self.target != 0, "mode": self.mode != "all-to-one", "trigger": self.trigger != TriggerConfig()}
        if self.attack == "poison-frogs":
            extra = sorted(key for key, changed in {**given, "rate": rate_given}.items() if changed)
            if extra:
                raise ValueError(f"poison-frogs attacks chosen evaluation rows with its own poisons: {', '.join(extra)} do not apply (set targets, poisons)")
            end_to_end = self.setting == "end-to-end"
            self.setting = self.setting or "transfer"
            self.targets = self.targets or POISON_FROGS_TARGETS
            self.poisons = self.poisons or (END_TO_END_POISONS if end_to_end else 1)
            self.watermark = self.watermark if self.watermark is not None else (END_TO_END_WATERMARK if end_to_end else 0.0)
            return self
        if self.attack == "gradient-matching":
            extra = sorted(key for key, changed in given.items() if changed)
            if extra:
                raise ValueError(f"gradient-matching attacks chosen evaluation rows (each with a random adversarial class): {', '.join(extra)} do not apply (set targets)")
            self.targets = self.targets or GRADIENT_MATCHING_TARGETS
            if "rate" not in self.model_fields_set:
                self.rate = GRADIENT_MATCHING_RATE
            if self.rate >= 1:
                raise ValueError(f"gradient-matching: rate must be < 1; got {self.rate}")
            if self.eps is not None and not 0 < self.eps <= 1:
                raise ValueError(f"gradient-matching: eps must be in (0, 1] (an Linf budget in [0, 1] pixels); got {self.eps}")
            return self
        if self.attack == "trojannet":
            extra = sorted(key for key, changed in {"mode": given["mode"], "trigger": given["trigger"], "rate": rate_given}.items() if changed)
            if extra:
                raise ValueError(f"trojannet poisons no data (it wraps the audited model, with its own 4x4 triggers): {', '.join(extra)} do not apply")
            self.target_classes = self.target_classes or [self.target]
            if len(set(self.target_classes)) != len(self.target_classes) or min(self.target_classes) < 0:
                raise ValueError(f"trojannet: target_classes must be distinct class numbers >= 0; got {self.target_classes}")
            return self
        if self.attack in ACCURACY_ATTACKS:
            extra = sorted(key for key, changed in given.items() if changed)
            if extra:
                raise ValueError(f"{self.attack} lowers accuracy on every class: {', '.join(extra)} do not apply")
            if "rate" not in self.model_fields_set:
                self.rate = ACCURACY_ATTACKS[self.attack]
            if self.rate >= 1:
                raise ValueError(f"{self.attack}: rate must be < 1; got {self.rate}")
            return self
        if self.attack == "clean-label":
            if self.mode != "all-to-one":
                raise ValueError("clean-label backdoors are all-to-one (the poisoned rows keep their target-class labels)")
            if "rate" not in self.model_fields_set:
                self.rate = CLEAN_LABEL_RATE
            if self.rate >= 1:
                raise ValueError(f"clean-label: rate must be < 1; got {self.rate}")
        return self


class AdversarialTrainingConfig(_Strict):
    """The evasion mitigation: train a hardened copy of the architecture."""

    defense: Literal["adv-pgd", "adv-fast", "trades"] = "adv-pgd"
    eps: float | None = Field(None, gt=0, description="training budget; default from the data: greyscale 0.2, colour Linf 8/255 or L2 0.5")
    epochs: int = Field(20, ge=1)


class BackdoorDefenseConfig(_Strict):
    """Inspect each poisoned model with Neural Cleanse, then repair it."""

    inspect: Literal["neural-cleanse", "k-arm"] = Field("neural-cleanse", description="trigger reverse engineering: Neural Cleanse, or K-Arm's bandit over the classes")
    epochs: int = Field(40, ge=1, description="optimisation epochs per class (K-Arm: its own cap of 16 unless set)")
    limit: int | None = Field(None, ge=1, description="optimise the triggers on the first N evaluation rows (default: all)")
    mitigations: list[Literal["nc-unlearn", "nc-prune", "fine-pruning", "mode-connectivity"]] = Field(default_factory=lambda: ["nc-unlearn", "nc-prune"])


class DataDefenseConfig(_Strict):
    """Scan each backdoor scenario's poisoned training set, drop the flagged rows, retrain, attack again."""

    scanners: list[Literal["activation-clustering", "spectral-signatures", "strip"]] = Field(
        default_factory=lambda: ["activation-clustering"], min_length=1, description="poisoned-data scanners, each its own scan and retraining"
    )


class InputDefenseConfig(_Strict):
    """A reactive input defense in front of the audited model (MagNet), attacked with the evasion attacks.

    Its autoencoders train on the train split; the thresholds are set on the first half of
    the evaluation rows at ``fpr``; every evasion attack and eps of the audit then runs on
    the second half, obliviously, through the reformer (BPDA and the exact gradient) and
    detector-aware (:func:`advkit.defenses.input.pipeline.attack_defended`).
    """

    defense: Literal["magnet"] = "magnet"
    fpr: float = Field(0.05, gt=0, lt=1, description="clean rows all detectors together may reject")
    steps: int = Field(1000, ge=1, description="autoencoder training steps")


class CertificationConfig(_Strict):
    """Randomized smoothing (Cohen 2019) of the audited model, and a certified-training mitigation."""

    sigma: float = Field(0.25, gt=0)
    n0: int = Field(100, ge=1)
    n: int = Field(1000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    limit: int | None = Field(100, ge=1, description="certify only the first N rows")
    training: Literal["gaussian", "smoothadv", "macer"] | None = "gaussian"
    epochs: int = Field(20, ge=1)
    denoised: bool | None = Field(
        None, description="denoised smoothing (Salman et al. 2020): train a denoiser in front of the frozen model and certify that; default: when the audit fine-tunes"
    )
    denoiser_epochs: int = Field(10, ge=1, description="epochs of the denoiser's training (MSE warm-up, then the stability objective)")

    @model_validator(mode="after")
    def _n0_within_n(self) -> CertificationConfig:
        if self.n0 > self.n:
            raise ValueError(f"n0 ({self.n0}) must not exceed n ({self.n})")
        return self


class FineTuneConfig(_Strict):
    """How the audit fine-tunes a copy of the given model instead of retraining its architecture."""

    epochs: int = Field(3, ge=1, description="epochs of every fine-tuning (mitigations and the poisoned models)")
    lr: float = Field(0.001, gt=0, description="peak learning rate (SGD, one-cycle: 15% warm-up, cosine decay)")
    rows: int | None = Field(None, ge=1, description="fine-tune on the first N train rows (default: all)")


class AuditConfig(_Strict):
    """Everything one audit does; every field has a default."""

    version: Literal[1] = 1
    model: str = "zoo:digits-cnn"
    data: str = "digits"
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(None, ge=1)
    image_size: int | None = Field(
        None, ge=1, description="image folders: resize the shorter side to round(image_size / crop_fraction) and centre-crop image_size x image_size"
    )
    crop_fraction: float = Field(0.875, gt=0, le=1, description="share of the resized shorter side the centre crop keeps (0.875: 256 -> 224)")
    seed: int = 0
    training: Literal["auto", "retrain", "fine-tune"] = Field(
        "auto",
        description="how mitigated and poisoned models are made: retrain the architecture from scratch, or fine-tune a copy of the given model; auto: retrain when the model names an advkit architecture, else fine-tune",
    )
    fine_tune: FineTuneConfig = Field(default_factory=FineTuneConfig)
    device: str = Field("cpu", description="where every step runs: cpu, cuda, cuda:N (--device overrides it)")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast precision of the attacks' and the trainings' passes; every verdict is re-checked in float32"
    )
    max_memory_gb: float | None = Field(
        None, gt=0, description="peak-memory cap: batched steps split their batches to stay under it (default: ADVKIT_MAX_MEMORY_GB, else half the RAM)"
    )
    evasion: EvasionConfig = Field(default_factory=EvasionConfig)
    adversarial_training: AdversarialTrainingConfig | None = Field(default_factory=AdversarialTrainingConfig)
    poisoning: list[PoisoningConfig] = Field(default_factory=lambda: [PoisoningConfig()])
    backdoor_defense: BackdoorDefenseConfig | None = Field(default_factory=BackdoorDefenseConfig)
    certification: CertificationConfig | None = Field(default_factory=CertificationConfig)
    input_defense: InputDefenseConfig | None = Field(None, description="MagNet in front of the model, attacked by the evasion attacks (off by default)")
    data_defense: DataDefenseConfig | None = Field(None, description="scan the backdoor scenarios' training sets, remove flagged rows, retrain (off by default)")


def fine_tunes(config: AuditConfig, arch: str | None) -> bool:
    """Whether the audit fine-tunes the given model (``training``) rather than retraining ``arch``."""
    return config.training == "fine-tune" or (config.training == "auto" and not arch)


GREY_EPS = [0.05, 0.1, 0.2, 0.3]  # the MNIST convention, either norm (as before these defaults followed the data)
COLOUR_EPS = {"linf": [1 / 255, 2 / 255, 4 / 255, 8 / 255], "l2": [0.25, 0.5, 1.0]}  # RobustBench: CIFAR-10 8/255, ImageNet 4/255, L2 0.5
GREY_TRAINING_EPS = 0.2
COLOUR_TRAINING_EPS = {"linf": 8 / 255, "l2": 0.5}


def with_data_defaults(config: AuditConfig, channels: int) -> tuple[AuditConfig, list[dict[str, Any]]]:
    """The config with every budget left unset filled in for the data, and what was filled.

    Greyscale images (one channel) keep the MNIST budgets; colour images get RobustBench's
    (Croce et al., NeurIPS 2021 datasets track): Linf 1/255-8/255, L2 0.25-1.0, and
    adversarial training at Linf 8/255 or L2 0.5. The report lists each default applied.
    """
    colour = channels >= 3
    norm = config.evasion.norm
    kind = f"{channels}-channel images, {norm}"
    applied: list[dict[str, Any]] = []
    evasion = config.evasion
    if evasion.eps is None:
        eps = COLOUR_EPS[norm] if colour else GREY_EPS
        evasion = evasion.model_copy(update={"eps": list(eps)})
        applied.append({"key": "evasion.eps", "value": list(eps), "because": f"{kind}: " + ("RobustBench budgets" if colour else "the MNIST convention")})
    training = config.adversarial_training
    if training is not None and training.eps is None:
        value = COLOUR_TRAINING_EPS[norm] if colour else GREY_TRAINING_EPS
        training = training.model_copy(update={"eps": value})
        applied.append({"key": "adversarial_training.eps", "value": value, "because": f"{kind}: " + ("RobustBench's training budget" if colour else "the MNIST convention")})
    return config.model_copy(update={"evasion": evasion, "adversarial_training": training}), applied


def default_yaml() -> str:
    """The default configuration as YAML (what ``--print-config`` writes)."""
    header = "# advkit audit configuration (every key optional; these are the defaults)\n"
    return header + yaml.safe_dump(AuditConfig().model_dump(mode="json"), sort_keys=False)


def _key_lines(node: yaml.Node, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    """Line (1-based) of every key path in a composed YAML document."""
    lines: dict[tuple[Any, ...], int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update(_key_lines(value, path))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            path = prefix + (index,)
            lines[path] = item.start_mark.line + 1
            lines.update(_key_lines(item, path))
    return lines


def load_config(path: str | Path | None) -> AuditConfig:
    """Read and validate a YAML config (``None``: the defaults)."""
    if path is None:
        return AuditConfig()
    path = Path(path)
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise AdvkitError(f"{path}: no such config file") from None
    except OSError as exc:
        raise AdvkitError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw_bytes.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw_bytes[: exc.start].count(b"\n") + 1
        raise AdvkitError(f"{path}:{line}: not a YAML config: byte 0x{raw_bytes[exc.start]:02x} is not UTF-8 text") from None
    try:
        raw = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise AdvkitError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AdvkitError(f"{path}: the config must be a mapping of keys, got {type(raw).__name__}")
    try:
        return AuditConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        lines = _key_lines(node) if node is not None else {}
        line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
        dotted = ".".join(str(part) for part in loc) or "(top level)"
        if error["type"] == "extra_forbidden":
            message = f"unknown key '{dotted}'"
        else:
            message = f"{dotted}: {error['msg']}"
            if "input" in error and not isinstance(error["input"], dict | list):
                message += f" (got {error['input']!r})"
        raise AdvkitError(f"{path}{f':{line}' if line else ''}: {message}") from None
