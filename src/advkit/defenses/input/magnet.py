"""MagNet: autoencoder detectors reject off-manifold inputs, an autoencoder reforms the rest.

Meng & Chen, "MagNet: a Two-Pronged Defense against Adversarial Examples", ACM CCS 2017
(checked against the authors' code, github.com/Trevillie/MagNet, ``worker.py``):

- **Reconstruction-error detectors** score a row by the mean ``|x - ae(x)|^p`` of an
  autoencoder trained on clean data: ``recon-l2-I`` (Detector I of MNIST, the reformer's
  autoencoder, p = 2) and ``recon-l1-II`` (Detector II, the small autoencoder, p = 1).
- **Probability-divergence detectors** ``jsd-T10``, ``jsd-T40``: the Jensen-Shannon
  divergence between the classifier's ``softmax(logits / T)`` on ``x`` and on the
  reformer's ``ae(x)`` (the paper's CIFAR-10 detectors, T = 10 and 40).
- **Reformer**: the classifier sees ``ae(x)`` of autoencoder I instead of ``x``.
- **Thresholds** come from clean validation rows at a chosen false-positive rate.

Differences from the paper: it picks a detector set per dataset (MNIST: Detectors I and
II; CIFAR-10: Detector II and both divergences) and each detector's false-positive rate
by hand (0.001-0.005 per detector on MNIST). advkit uses the union of all four detectors
on any data by default, and calibrates one common per-detector rate: the largest whose
union rejects at most ``fpr`` of the clean validation rows (default 5% in all). The
autoencoders train a fixed number of optimiser steps (the paper: 100 epochs of 55,000
MNIST rows at Keras' Adam defaults) with a one-cycle learning rate peaking at 0.1: the
sigmoid networks learn too slowly at 1e-3 for a few hundred steps. The gray-box variant (a random pick among
several diverse autoencoders) is not implemented. Attacks on the defended model:
:mod:`advkit.defenses.input.pipeline`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from advkit.core import DetectionReport, ModelHandle, ModelInfo, check_images
from advkit.defenses.input.magnet_autoencoder import (
    STRUCTURE_I,
    STRUCTURE_II,
    Detector,
    InBounds,
    MagNetAutoencoder,
    build_autoencoder,
    check_structure,
    jensen_shannon,
    parse_detector,
    read_autoencoders,
    reconstruction_error,
    train_autoencoder,
    write_autoencoders,
)
from advkit.errors import AdvkitError
from advkit.fileio import check_writable, read_json, write_json
from advkit.models.train import Progress, TrainConfig
from advkit.registry import register

AUTOENCODERS = ("I", "II")
DEFAULT_DETECTORS = ("recon-l2-I", "recon-l1-II", "jsd-T10", "jsd-T40")
WEIGHTS_FILE = "magnet.safetensors"
CONFIG_FILE = "magnet.json"
FORMAT = "advkit-magnet"


@register(
    "magnet",
    family="defense",
    knowledge="black",
    paper="Meng, Chen. MagNet: a Two-Pronged Defense against Adversarial Examples. ACM CCS 2017",
    atlas="AML.M0015",
    summary="autoencoder detectors (reconstruction error, Jensen-Shannon divergence at T=10, 40) reject "
    "off-manifold inputs at a calibrated false-positive rate; a denoising autoencoder reforms the rest",
)
class MagNet:
    """MagNet's settings; :meth:`fit` trains the autoencoders and calibrates a :class:`MagNetDefense`.

    ``steps``: optimiser steps per autoencoder (epochs follow from the row count), batch
    ``batch_size``, peak learning rate ``lr`` (Adam, one-cycle); ``noise``: the denoising
    noise volume; ``reg_strength``: the L2 activity penalty (paper: 0.1 and 1e-9).
    """

    name = "magnet"

    def __init__(
        self,
        *,
        detectors: Sequence[str] = DEFAULT_DETECTORS,
        reformer: str = "I",
        structure_i: Sequence[int | str] = STRUCTURE_I,
        structure_ii: Sequence[int | str] = STRUCTURE_II,
        noise: float = 0.1,
        reg_strength: float = 1e-9,
        steps: int = 1000,
        batch_size: int = 64,
        lr: float = 0.1,
    ) -> None:
        if str(reformer).upper() not in AUTOENCODERS:
            raise AdvkitError(f"MagNet: reformer must be autoencoder I or II; got {reformer!r}")
        self.reformer = str(reformer).upper()
        if isinstance(detectors, str) or not detectors:
            raise AdvkitError(f"MagNet: detectors must be a non-empty list of names; got {detectors!r}")
        self.detectors = [parse_detector(d, self.reformer) for d in detectors]
        names = [d.name for d in self.detectors]
        if len(set(names)) != len(names):
            raise AdvkitError(f"MagNet: a detector is listed twice in {names}")
        self.structures = {"I": check_structure(structure_i, "structure_i"), "II": check_structure(structure_ii, "structure_ii")}
        if not (math.isfinite(noise) and noise >= 0) or not (math.isfinite(reg_strength) and reg_strength >= 0):
            raise AdvkitError(f"MagNet: noise and reg_strength must be finite and >= 0; got {noise}, {reg_strength}")
        if steps < 1 or batch_size < 1 or not (math.isfinite(lr) and lr > 0):
            raise AdvkitError(f"MagNet: steps, batch_size and lr must be positive; got {steps}, {batch_size}, {lr}")
        self.noise, self.reg_strength = float(noise), float(reg_strength)
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)

    def settings(self) -> dict[str, Any]:
        """The training settings, as saved with a fitted defense."""
        return {"noise": self.noise, "reg_strength": self.reg_strength, "steps": self.steps, "batch_size": self.batch_size, "lr": self.lr}

    def fit(
        self,
        handle: ModelHandle,
        x_train: Tensor,
        x_val: Tensor,
        fpr: float = 0.05,
        *,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> MagNetDefense:
        """Train the autoencoders on clean ``x_train``; set thresholds on clean ``x_val`` so the union rejects <= ``fpr``."""
        if not isinstance(handle, ModelHandle):
            raise AdvkitError("MagNet.fit takes an advkit ModelHandle (the classifier to defend)")
        if isinstance(fpr, bool) or not isinstance(fpr, int | float) or not 0.0 < float(fpr) < 1.0:
            raise AdvkitError(f"MagNet: fpr must be a rate in (0, 1); got {fpr!r}")
        x_train = check_images(x_train, handle.info, "MagNet x_train")
        x_val = check_images(x_val, handle.info, "MagNet x_val")
        if x_train.shape[0] < 1:
            raise AdvkitError("MagNet x_train: no rows to train the autoencoders on")
        if x_val.shape[0] * float(fpr) < 1:
            raise AdvkitError(
                f"MagNet x_val: {x_val.shape[0]} rows cannot calibrate a false-positive rate of {fpr:g}; "
                f"give at least {math.ceil(1 / float(fpr))}"
            )
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        needed = {d.autoencoder for d in self.detectors} | {self.reformer}
        channels = handle.input_shape[0]
        low, high = handle.bounds
        unit = (x_train - low) / (high - low)  # the autoencoders work on images in [0, 1]
        epochs = math.ceil(self.steps / math.ceil(x_train.shape[0] / self.batch_size))
        autoencoders: dict[str, MagNetAutoencoder] = {}
        for name in (a for a in AUTOENCODERS if a in needed):
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
            autoencoder = build_autoencoder(channels, self.structures[name], seed).to(handle.device)
            config = TrainConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, schedule="cosine", seed=seed)
            report = None if progress is None else (lambda _s, done, total, _n=name: progress(f"magnet autoencoder {_n}", done, total))
            train_autoencoder(autoencoder, unit, config, noise=self.noise, reg_strength=self.reg_strength, progress=report)
            autoencoders[name] = autoencoder
        defense = MagNetDefense(
            autoencoders, self.detectors, self.reformer, handle.info, torch.zeros(len(self.detectors)),
            classifier=handle, settings=self.settings(),
        )
        defense.thresholds, defense.calibration = calibrate(defense.detector_scores(x_val), float(fpr), defense.detector_names)
        defense.probe_logits = probe_logits(handle).tolist()
        return defense


def calibrate(scores: Tensor, fpr: float, names: Sequence[str]) -> tuple[Tensor, dict[str, Any]]:
    """Thresholds ``[D]`` from clean validation ``scores [N, D]``: one common per-detector budget of ``k`` rows,
    the largest ``k`` whose union flags at most ``floor(fpr * N)`` rows (a row is flagged when a score exceeds its threshold)."""
    n = scores.shape[0]
    allowed = math.floor(fpr * n + 1e-9)
    ordered = scores.sort(0, descending=True).values  # ordered[k]: at most k rows of a detector lie strictly above

    def union(k: int) -> int:
        return int((scores > ordered[k]).any(1).sum())

    low, high = 0, allowed  # union(0) == 0 <= allowed; union(k) grows with k
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if union(mid) <= allowed else (low, mid - 1)
    thresholds = ordered[low].clone()
    fired = scores > thresholds
    return thresholds, {
        "validation_rows": n,
        "false_positive_rate_target": fpr,
        "per_detector_budget_rows": low,
        "validation_false_positive_rate": int(fired.any(1).sum()) / n,
        "validation_rate_by_detector": {name: int(fired[:, i].sum()) / n for i, name in enumerate(names)},
    }


def probe_logits(handle: ModelHandle) -> Tensor:
    """The classifier's logits on two fixed images (ramps across the bounds): its fingerprint for a saved defense."""
    c, h, w = handle.input_shape
    lo, hi = handle.bounds
    ramp = torch.linspace(0.0, 1.0, c * h * w).view(1, c, h, w)
    return handle.predict_logits(lo + (hi - lo) * torch.cat([ramp, ramp.flip(-1)])).cpu()


class MagNetDefense:
    """A fitted MagNet: :meth:`detect`, :meth:`reform`, :meth:`predict`, :meth:`pipeline`, :meth:`save`/:meth:`load`.

    ``thresholds[i]`` belongs to ``detectors[i]``; a row is rejected when any detector's
    score exceeds its threshold. ``classifier`` is needed by divergence detectors.
    """

    def __init__(
        self,
        autoencoders: dict[str, MagNetAutoencoder],
        detectors: Sequence[Detector],
        reformer: str,
        info: ModelInfo,
        thresholds: Tensor,
        *,
        classifier: ModelHandle | None = None,
        settings: dict[str, Any] | None = None,
        calibration: dict[str, Any] | None = None,
        probe_logits: list[list[float]] | None = None,
    ) -> None:
        self.autoencoders = {name: InBounds(ae, info.bounds).eval() for name, ae in autoencoders.items()}
        self.detectors = list(detectors)
        self.reformer_name = reformer
        self.info = ModelInfo(input_shape=tuple(info.input_shape), num_classes=info.num_classes, bounds=tuple(info.bounds))  # type: ignore[arg-type]
        self.thresholds = thresholds
        self.classifier = classifier
        self.settings = dict(settings or {})
        self.calibration = dict(calibration or {})
        self.probe_logits = probe_logits
        self.batch_size = 512

    @property
    def detector_names(self) -> list[str]:
        return [d.name for d in self.detectors]

    @property
    def reformer(self) -> InBounds:
        """The reformer as a module on images in the model's bounds (differentiable)."""
        return self.autoencoders[self.reformer_name]

    def check(self, x: Tensor, where: str = "MagNet input") -> Tensor:
        """``x`` checked against the defended model's shape and bounds, on the autoencoders' device."""
        x = check_images(x, self.info, where)
        return x.to(next(self.reformer.parameters()).device)

    def to(self, device: str | torch.device) -> MagNetDefense:
        """Move the autoencoders to ``device`` (in place); returns the defense."""
        for module in self.autoencoders.values():
            module.to(device)
        return self

    def _needs_classifier(self) -> ModelHandle:
        if self.classifier is None:
            raise AdvkitError("MagNet: the divergence detectors need the classifier; load the defense with load(folder, handle)")
        return self.classifier

    def reform(self, x: Tensor) -> Tensor:
        """The reformer's output ``ae(x)`` for every row (no gradients)."""
        x = self.check(x)
        with torch.inference_mode():
            parts = [self.reformer(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else x.clone()

    def score_batch(self, x: Tensor, reformed_logits: Tensor | None = None) -> Tensor:
        """Detector scores ``[N, D]`` of one (checked) batch; differentiable when grad mode is on (adaptive attacks).
        ``reformed_logits``: the classifier's logits of the reformer's ``ae(x)`` where the caller has them."""
        outputs: dict[str, Tensor] = {}
        logits: tuple[Tensor, Tensor] | None = None
        columns = []
        for detector in self.detectors:
            if detector.autoencoder not in outputs:
                outputs[detector.autoencoder] = self.autoencoders[detector.autoencoder](x)
            if detector.kind == "reconstruction":
                module = self.autoencoders[detector.autoencoder]
                columns.append(reconstruction_error(module.to_unit(x), module.to_unit(outputs[detector.autoencoder]), detector.p))
            else:
                if logits is None:
                    classifier = self._needs_classifier()
                    reformed = classifier.logits(outputs[detector.autoencoder]) if reformed_logits is None else reformed_logits
                    logits = classifier.logits(x), reformed
                columns.append(jensen_shannon(logits[0], logits[1], detector.temperature))
        return torch.stack(columns, 1)

    def detector_scores(self, x: Tensor) -> Tensor:
        """Detector scores ``[N, D]`` of every row, in :attr:`detector_names` order (no gradients)."""
        x = self.check(x)
        with torch.inference_mode():
            parts = [self.score_batch(x[i : i + self.batch_size]) for i in range(0, x.shape[0], self.batch_size)]
        return torch.cat(parts) if parts else x.new_zeros(0, len(self.detectors))

    def detect(self, x: Tensor) -> DetectionReport:
        """Which rows to reject. ``scores``: each row's largest score / threshold (flagged above 1);
        ``details``: ``fired`` ``[N, D]`` (which detector flagged which row), ``detector_scores``, thresholds."""
        start = time.perf_counter()
        scores = self.detector_scores(x)
        thresholds = self.thresholds.to(scores.device)
        fired = scores > thresholds
        flagged = fired.any(1)
        return DetectionReport(
            method="magnet",
            scores=(scores / thresholds.clamp_min(1e-12)).amax(1) if len(scores) else scores.new_zeros(0),
            flagged=flagged,
            seconds=time.perf_counter() - start,
            details={
                "detectors": self.detector_names,
                "thresholds": dict(zip(self.detector_names, (float(t) for t in self.thresholds))),
                "fired": fired,
                "detector_scores": scores,
                "flagged_by": {name: int(fired[:, i].sum()) for i, name in enumerate(self.detector_names)},
            },
        )

    def pipeline(self, handle: ModelHandle | None = None, *, bpda: bool = False) -> ModelHandle:
        """The defended model as a handle: reformer, then ``handle`` (default: the classifier it was fitted with).
        Rejections are :meth:`detect`'s. ``bpda``: the reformer's backward pass is the identity (adaptive attacks)."""
        from advkit.defenses.input.pipeline import reformed_handle

        return reformed_handle(self, handle if handle is not None else self._needs_classifier(), bpda=bpda)

    def predict(self, x: Tensor, handle: ModelHandle | None = None) -> Tensor:
        """The defended model's labels: the reformed input's class, ``-1`` for a rejected row."""
        labels = self.pipeline(handle).predict(self.check(x))
        return torch.where(self.detect(x).flagged.to(labels.device), torch.full_like(labels, -1), labels)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved beside the weights: shapes, detectors with thresholds, calibration, settings."""
        return {
            "format": FORMAT,
            "version": 1,
            "input_shape": list(self.info.input_shape),
            "num_classes": self.info.num_classes,
            "bounds": list(self.info.bounds),
            "reformer": self.reformer_name,
            "autoencoders": {name: list(m.autoencoder.structure) for name, m in self.autoencoders.items()},
            "detectors": [{**asdict(d), "threshold": float(t)} for d, t in zip(self.detectors, self.thresholds)],
            "calibration": self.calibration,
            "settings": self.settings,
            "classifier_probe_logits": self.probe_logits,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``magnet.safetensors`` (weights) and ``magnet.json`` (config, thresholds) into ``directory``."""
        folder = check_writable(directory, "MagNet folder", directory=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_autoencoders(folder / WEIGHTS_FILE, {name: m.autoencoder for name, m in self.autoencoders.items()})
        write_json(folder / CONFIG_FILE, self.to_dict())
        return folder

    @classmethod
    def load(cls, directory: str | Path, handle: ModelHandle | None = None) -> MagNetDefense:
        """A saved defense; ``handle``: its classifier (divergence detectors need it; checked against the saved fingerprint)."""
        folder = Path(directory)
        if not folder.is_dir():
            raise AdvkitError(f"{folder}: no such folder with a saved MagNet defense")
        for file in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / file).is_file():
                raise AdvkitError(f"{folder}: no {file}; a saved MagNet defense has {CONFIG_FILE} and {WEIGHTS_FILE}")
        where = folder / CONFIG_FILE
        raw = read_json(where, "MagNet config")
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise AdvkitError(f"{where}: not a MagNet config (its format is not {FORMAT!r})")
        try:
            shape = tuple(int(v) for v in raw["input_shape"])
            low, high = (float(b) for b in raw["bounds"])
            info = ModelInfo(input_shape=shape, num_classes=int(raw["num_classes"]), bounds=(low, high))  # type: ignore[arg-type]
            reformer = str(raw["reformer"])
            structures = {str(k): check_structure(v, f"{where} autoencoder {k}") for k, v in raw["autoencoders"].items()}
            detectors = [parse_detector(d["name"], reformer) for d in raw["detectors"]]
            thresholds = torch.tensor([float(d["threshold"]) for d in raw["detectors"]])
            probe = raw.get("classifier_probe_logits")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise AdvkitError(f"{where}: malformed MagNet config ({type(exc).__name__}: {exc})") from None
        used = {d.autoencoder for d in detectors} | {reformer}
        if len(shape) != 3 or min(shape) < 1 or not low < high or not detectors or not used <= set(structures):
            raise AdvkitError(f"{where}: malformed MagNet config (shape, bounds, detectors or autoencoders)")
        if not bool(torch.isfinite(thresholds).all()):
            raise AdvkitError(f"{where}: a detector threshold is not a finite number")
        autoencoders = read_autoencoders(folder / WEIGHTS_FILE, structures, shape[0])
        if handle is not None:
            _check_classifier(handle, info, probe, any(d.kind == "divergence" for d in detectors), folder)
            autoencoders = {name: ae.to(handle.device) for name, ae in autoencoders.items()}
        return cls(
            autoencoders, detectors, reformer, info, thresholds, classifier=handle, settings=raw.get("settings") or {},
            calibration=raw.get("calibration") or {}, probe_logits=probe,
        )


def _check_classifier(handle: ModelHandle, info: ModelInfo, probe: Any, divergence: bool, folder: Path) -> None:
    """The classifier given with a saved defense must take its images and, for divergence detectors, be the one calibrated."""
    if tuple(handle.input_shape) != tuple(info.input_shape) or handle.num_classes != info.num_classes:
        raise AdvkitError(
            f"{folder}: the defense was fitted for {list(info.input_shape)} images and {info.num_classes} classes; "
            f"the model takes {list(handle.input_shape)} and has {handle.num_classes}"
        )
    if divergence and probe is not None:
        saved = torch.tensor(probe, dtype=torch.float32)
        now = probe_logits(handle)
        if saved.shape != now.shape or not torch.allclose(now, saved, rtol=1e-3, atol=1e-3):
            raise AdvkitError(f"{folder}: the defense's divergence thresholds were calibrated on another classifier than the model given")
