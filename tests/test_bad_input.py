"""Every bad input ends in one line: exit code 2, one stderr line, no traceback, nothing written.

Each case is a mistake a new user makes. The harness runs the CLI (in-process through
``advkit.cli.main``, a few as real ``python -m advkit.cli`` processes) in an empty working
directory and asserts, for every case: exit code 2; exactly one line on stderr, starting
``error:`` and naming the problem; no ``Traceback`` and no Python warning anywhere; no new
file in the working directory or beside the inputs; and an existing output -- a ``--json``
results file, a ``train --out`` model -- byte-identical afterwards.

Unwritable outputs: the suite runs as root, who ignores permission bits, so an unwritable
path is made with a regular file where a directory should be (``afile/out.json``) or a
pseudo file system where files cannot be created (``/proc``).

No case trains or attacks: the models are untrained networks saved to files (no zoo
training), and every case fails during validation, before any real work.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from advkit.cli import main

KEEP = b'{"precious": "an earlier run\'s results"}\n'
MODEL_BYTES = b"an earlier, good model file\n"
JSON_COMMANDS = {"attack", "train", "certify", "inspect", "steal"}


# -- fixtures: every bad file, built once ------------------------------------------------


class Flat784(nn.Module):
    """A foreign model that only takes 28x28 images (TorchScript/ONNX shape cases)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], 784))


class RGBConv(nn.Module):
    """A foreign model that takes 3-channel 8x8 images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 10, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` grey pixels: a bomb in a few bytes."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b""))


def _image_folder(root: Path, counts: list[int], rng: np.random.Generator) -> Path:
    from PIL import Image

    for label, count in enumerate(counts):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8)).save(root / f"class{label}" / f"{i}.png")
    return root


def _build_fixtures(fx: Path) -> None:  # noqa: PLR0915 - one place that makes every bad file
    from PIL import Image

    from advkit.core import ModelHandle, ModelInfo
    from advkit.models import build, save_model

    rng = np.random.default_rng(0)
    digits = rng.integers(0, 255, (40, 8, 8)).astype(np.uint8)
    labels = np.arange(40) % 10

    # models: untrained digits-cnn networks, so no case waits for the zoo to train
    def handle(num_classes: int) -> ModelHandle:
        net = build("digits-cnn", in_channels=1, num_classes=num_classes, image_size=8, seed=0)
        info = ModelInfo(input_shape=(1, 8, 8), num_classes=num_classes, classes=[str(i) for i in range(num_classes)], arch="digits-cnn")
        return ModelHandle(net, info, device="cpu")

    good = handle(10)
    save_model(good, fx / "good.safetensors")
    save_model(handle(3), fx / "three.safetensors")
    state = {k: v.contiguous() for k, v in good.net.state_dict().items()}
    (fx / "text.safetensors").write_text("these are not weights\n")
    whole = (fx / "good.safetensors").read_bytes()
    (fx / "truncated.safetensors").write_bytes(whole[: len(whole) // 2])
    save_file(state, str(fx / "badmeta.safetensors"), metadata={"advkit": "{not json"})
    save_file(state, str(fx / "listmeta.safetensors"), metadata={"advkit": "[1, 2]"})
    meta3 = {"input_shape": [1, 8, 8], "num_classes": 3, "arch": "digits-cnn"}
    save_file(state, str(fx / "mismatch.safetensors"), metadata={"advkit": json.dumps(meta3)})
    save_file(state, str(fx / "sidecar.safetensors"))
    (fx / "sidecar.safetensors.json").write_text("{'single': 'quotes'}")
    torch.save(good.net, fx / "module.pt")  # a whole pickled nn.Module, not a state dict
    torch.save(good.net.state_dict(), fx / "plain.pt")  # weights without metadata
    torch.save({"state_dict": state, "advkit": "{broken"}, fx / "badmeta.pt")
    (fx / "text.pt").write_text("hello, I am not a checkpoint\n")
    torch.jit.script(Flat784()).save(str(fx / "flat784.pt"))
    torch.jit.script(RGBConv()).save(str(fx / "rgb.pt"))
    try:
        import onnx  # noqa: F401

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Flat784(), (torch.zeros(1, 1, 28, 28),), str(fx / "flat784.onnx"), dynamo=False, opset_version=17,
                              input_names=["x"], dynamic_axes={"x": {0: "n"}})
    except Exception:  # noqa: BLE001 - the ONNX case is skipped without the extra
        pass

    # npz data
    nan = rng.random((20, 8, 8)).astype(np.float32)
    nan[3, 2, 2] = np.nan
    np.savez(fx / "nan.npz", x=nan, y=np.arange(20) % 2)
    np.savez(fx / "label40.npz", x=digits, y=np.r_[labels[:-1], 40])
    np.savez(fx / "negative.npz", x=digits, y=np.r_[labels[:-1], -1])
    np.savez(fx / "flat.npz", x=digits.reshape(40, 64), y=labels)
    np.savez(fx / "objects.npz", x=np.array([{"a": 1}, [2]], dtype=object), y=np.arange(2))
    np.savez(fx / "noy.npz", x=digits)
    np.savez(fx / "ok.npz", x=digits, y=labels)
    np.savez(fx / "big.npz", x=rng.integers(0, 255, (40, 28, 28)).astype(np.uint8), y=labels)
    whole = (fx / "ok.npz").read_bytes()
    (fx / "truncated.npz").write_bytes(whole[: len(whole) // 2])
    (fx / "pickle.npz").write_bytes(pickle.dumps({"x": [1, 2, 3]}))
    np.save(fx / "array.npy", digits)
    (fx / "array.npy").rename(fx / "npy.npz")
    np.savez(fx / "float255.npz", x=digits.astype(np.float32), y=labels)
    np.savez(fx / "ylen.npz", x=digits, y=labels[:-1])
    np.savez(fx / "lonely.npz", x=digits[:21], y=np.r_[np.arange(20) % 2, 2])
    np.savez(fx / "fewrows.npz", x=digits[:20], y=np.arange(20) % 10)
    np.savez(fx / "onerow.npz", x=digits[:1], y=np.array([3]))
    (fx / "data.csv").write_text("1,2,3\n")

    # other dataset formats
    idx = fx / "idx"
    idx.mkdir()
    _write_idx(idx / "t10k-images-idx3-ubyte", np.zeros((10, 8, 8)))
    _write_idx(idx / "t10k-labels-idx1-ubyte", np.zeros(10))
    raw = (idx / "t10k-images-idx3-ubyte").read_bytes()
    (idx / "t10k-images-idx3-ubyte").write_bytes(raw[:-9])
    cifar = fx / "cifar"
    cifar.mkdir()
    (cifar / "test_batch.bin").write_bytes(bytes(3073 * 2 + 100))
    corrupt = _image_folder(fx / "corrupt", [3, 3], rng)
    (corrupt / "class0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    bomb = _image_folder(fx / "bomb", [3, 3], rng)
    _png_header_only(bomb / "class0" / "huge.png", 20000, 20000)  # 4e8 pixels: over twice Pillow's limit, an error
    warned = _image_folder(fx / "bombwarning", [3, 3], rng)
    _png_header_only(warned / "class1" / "large.png", 10000, 10000)  # 1e8 pixels: over the limit, Pillow only warns
    _image_folder(fx / "oneimage", [4, 1], rng)
    sizes = _image_folder(fx / "sizes", [3, 3], rng)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(sizes / "class1" / "odd.png")
    empty = _image_folder(fx / "emptyclass", [3, 3], rng)
    (empty / "class2").mkdir()  # a class folder with no images

    # audit configs and run directories
    (fx / "list.yaml").write_text("- fgsm\n- pgd\n")
    (fx / "unknown.yaml").write_text("seed: 1\nfrobnicate: 1\n")
    (fx / "noattacks.yaml").write_text("evasion:\n  attacks: []\n")
    (fx / "noeps.yaml").write_text("evasion:\n  eps: []\n")
    (fx / "latin1.yaml").write_bytes("model: zoo:digits-cnn\n# caf\xe9\n".encode("latin-1"))
    (fx / "invalid.yaml").write_text("evasion: [fgsm\n")
    (fx / "missingmodel.yaml").write_text(f"model: {fx / 'absent.safetensors'}\n")
    held = fx / "held"
    held.mkdir()
    (held / "config.json").write_text("{}\n")
    (fx / "norun").mkdir()
    (fx / "badreport").mkdir()
    (fx / "badreport" / "report.json").write_text('{"schema": ')
    (fx / "otherreport").mkdir()
    (fx / "otherreport" / "report.json").write_text('{"schema": "something-else"}\n')
    (fx / "badmanifest.json").write_text('{"version": 1, "files": [')
    (fx / "nofiles.json").write_text('{"version": 1}\n')
    (fx / "binary.json").write_bytes(b"\xff\xfe\x00{")
    (fx / "afile").write_text("a regular file where a directory should be\n")


@pytest.fixture(scope="session")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    _build_fixtures(root)
    return root


# -- the cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """argv with ``@NAME`` for a fixture file; ``needle`` must appear in the one stderr line."""

    id: str
    argv: list[str]
    needle: str
    process: bool = False  # run as a real ``python -m advkit.cli`` process
    outputs: bool = True  # add an existing --json (and train --out) target the case must not touch
    marks: tuple = field(default=())
    env: dict = field(default_factory=dict)  # environment variables of the run


M = "@good.safetensors"  # a model that fits the digits data
CASES = [
    # attack: options
    Case("attack-unknown-name", ["attack", "bogus"], "unknown evasion 'bogus'"),
    Case("attack-eps-not-a-number", ["attack", "fgsm", "--eps", "abc"], "--eps takes numbers"),
    Case("attack-eps-negative", ["attack", "fgsm", "--eps", "-1"], "eps must be"),
    Case("attack-norm-l7", ["attack", "fgsm", "--norm", "l7"], "norm must be one of"),
    Case("attack-goal-bogus", ["attack", "fgsm", "--goal", "bogus"], "goal must be one of"),
    Case("attack-target-outside-classes", ["attack", "fgsm", "--model", M, "--goal", "targeted", "--target", "99", "--no-checks"], "--target 99"),
    Case("attack-steps-zero", ["attack", "pgd", "--steps", "0"], "steps must be >= 1"),
    Case("attack-max-queries-on-fgsm", ["attack", "fgsm", "--max-queries", "10"], "--max-queries"),
    Case("attack-knowledge-bogus", ["attack", "fgsm", "--knowledge", "bogus"], "knowledge must be one of"),
    Case("attack-device-cuda-99", ["attack", "fgsm", "--model", M, "--device", "cuda:99"], "--device cuda:99"),
    Case("attack-device-nonsense", ["attack", "fgsm", "--model", M, "--device", "nonsense"], "not a device name"),
    Case("attack-device-meta", ["attack", "fgsm", "--model", M, "--device", "meta"], "cpu, cuda or mps"),
    Case("attack-split-val", ["attack", "fgsm", "--model", M, "--split", "val"], "--split must be"),
    Case("attack-limit-zero", ["attack", "fgsm", "--model", M, "--limit", "0"], "--limit must be a positive"),
    Case("attack-batch-size-zero", ["attack", "fgsm", "--batch-size", "0"], "batch size"),
    Case("attack-unknown-option", ["attack", "fgsm", "--frobnicate", "3"], "No such option"),
    Case("attack-eps-missing-value", ["attack", "fgsm", "--eps"], "requires an argument"),
    # attack: models
    Case("model-missing-file", ["attack", "fgsm", "--model", "@absent.safetensors"], "no such file"),
    Case("model-unknown-zoo-name", ["attack", "fgsm", "--model", "zoo:bogus"], "unknown zoo model"),
    Case("model-text-named-safetensors", ["attack", "fgsm", "--model", "@text.safetensors"], "not a valid safetensors file"),
    Case("model-truncated-safetensors", ["attack", "fgsm", "--model", "@truncated.safetensors"], "truncated"),
    Case("model-pickled-module", ["attack", "fgsm", "--model", "@module.pt"], "refused"),
    Case("model-state-dict-without-metadata", ["attack", "fgsm", "--model", "@plain.pt"], "needs a sidecar"),
    Case("model-text-named-pt", ["attack", "fgsm", "--model", "@text.pt"], "not a readable PyTorch checkpoint"),
    Case("model-pt-malformed-metadata-json", ["attack", "fgsm", "--model", "@badmeta.pt"], "invalid JSON"),
    Case("model-safetensors-malformed-metadata-json", ["attack", "fgsm", "--model", "@badmeta.safetensors"], "invalid JSON"),
    Case("model-metadata-not-an-object", ["attack", "fgsm", "--model", "@listmeta.safetensors"], "JSON object"),
    Case("model-sidecar-malformed-json", ["attack", "fgsm", "--model", "@sidecar.safetensors"], "sidecar.safetensors.json: invalid JSON"),
    Case("model-weights-do-not-fit-metadata", ["attack", "fgsm", "--model", "@mismatch.safetensors"], "weights do not fit"),
    Case("model-classes-do-not-match-data", ["attack", "fgsm", "--model", "@three.safetensors"], "only 3 classes"),
    Case("model-torchscript-wrong-input-shape", ["attack", "fgsm", "--model", "@flat784.pt"], "784 values", process=True),
    Case("model-torchscript-wrong-channels", ["attack", "fgsm", "--model", "@rgb.pt"], "3-channel"),
    Case("model-onnx-wrong-input-shape", ["attack", "fgsm", "--model", "@flat784.onnx"], "[1, 28, 28]"),
    Case("model-image-size-differs-from-data", ["attack", "fgsm", "--model", M, "--data", "@big.npz"], "expects [1, 8, 8]"),
    # attack: data
    Case("data-missing-path", ["attack", "fgsm", "--model", M, "--data", "@absent"], "no such file or directory"),
    Case("data-unsupported-file", ["attack", "fgsm", "--model", M, "--data", "@data.csv"], "unsupported file type"),
    Case("npz-nan-pixels", ["attack", "fgsm", "--model", M, "--data", "@nan.npz", "--split", "all"], "NaN"),
    Case("npz-label-out-of-range", ["attack", "fgsm", "--model", M, "--data", "@label40.npz", "--split", "all"], "labels up to 40"),
    Case("npz-negative-label", ["attack", "fgsm", "--model", M, "--data", "@negative.npz", "--split", "all"], "negative label"),
    Case("npz-images-not-3d-or-4d", ["attack", "fgsm", "--model", M, "--data", "@flat.npz"], "got shape [40, 64]"),
    Case("npz-object-arrays", ["attack", "fgsm", "--model", M, "--data", "@objects.npz"], "never loads"),
    Case("npz-a-pickle-renamed", ["attack", "fgsm", "--model", M, "--data", "@pickle.npz"], "never loads", process=True),
    Case("npz-a-single-npy-array", ["attack", "fgsm", "--model", M, "--data", "@npy.npz"], "single .npy array"),
    Case("npz-missing-y", ["attack", "fgsm", "--model", M, "--data", "@noy.npz"], "expected arrays 'x' and 'y'"),
    Case("npz-truncated", ["attack", "fgsm", "--model", M, "--data", "@truncated.npz"], "not a readable .npz"),
    Case("npz-float-pixels-0-255", ["attack", "fgsm", "--model", M, "--data", "@float255.npz"], "float pixels span"),
    Case("npz-label-count-differs", ["attack", "fgsm", "--model", M, "--data", "@ylen.npz"], "40 images but labels"),
    Case("split-class-with-one-row", ["attack", "fgsm", "--model", M, "--data", "@lonely.npz"], "single row"),
    Case("split-too-few-rows-per-class", ["attack", "fgsm", "--model", M, "--data", "@fewrows.npz"], "too few for a stratified split"),
    Case("split-one-row", ["attack", "fgsm", "--model", M, "--data", "@onerow.npz"], "cannot be split"),
    Case("idx-truncated", ["attack", "fgsm", "--model", M, "--data", "@idx"], "truncated"),
    Case("cifar-truncated-batch", ["attack", "fgsm", "--model", M, "--data", "@cifar"], "not a whole number of records"),
    Case("images-corrupt-file", ["attack", "fgsm", "--model", M, "--data", "@corrupt"], "broken.png: unreadable image"),
    Case("images-decompression-bomb", ["attack", "fgsm", "--model", M, "--data", "@bomb"], "huge.png: refused as a possible decompression bomb"),
    Case("images-decompression-bomb-warning", ["attack", "fgsm", "--model", M, "--data", "@bombwarning"], "large.png: refused as a possible decompression bomb"),
    Case("images-class-with-one-image", ["attack", "fgsm", "--model", M, "--data", "@oneimage"], "class 'class1' has a single row"),
    Case("images-of-two-sizes", ["attack", "fgsm", "--model", M, "--data", "@sizes"], "differs from"),
    Case("images-empty-class-folder", ["attack", "fgsm", "--model", M, "--data", "@emptyclass"], "class2: class folder has no images"),
    Case("attack-over-the-memory-cap", ["attack", "pgd", "--model", M], "memory cap is free", env={"ADVKIT_MAX_MEMORY_GB": "0.00001"}),
    # --json
    Case("json-under-a-regular-file", ["attack", "fgsm", "--model", M, "--json", "@afile/out.json"], "is a file, not a directory", process=True),
    Case("json-under-proc", ["attack", "fgsm", "--model", M, "--json", "/proc/advkit-out.json"], "cannot write in /proc"),
    Case("json-is-a-directory", ["attack", "fgsm", "--model", M, "--json", "@norun"], "is a directory"),
    # train
    Case("train-out-wrong-suffix", ["train", "--out", "model.txt"], "model files end in"),
    Case("train-out-missing", ["train"], "--out FILE is required", outputs=False),
    Case("train-defense-bogus", ["train", "--defense", "bogus"], "--defense must be one of"),
    Case("train-epochs-zero", ["train", "--epochs", "0"], "epochs and batch size must be positive"),
    Case("train-batch-size-zero", ["train", "--batch-size", "0"], "epochs and batch size must be positive"),
    Case("train-lr-zero", ["train", "--lr", "0"], "learning rate"),
    Case("train-eval-eps-negative", ["train", "--eval-eps", "-1"], "eps must be"),
    Case("train-unknown-architecture", ["train", "--model", "bogus-arch"], "unknown architecture"),
    Case("train-out-under-a-regular-file", ["train", "--out", "@afile/m.safetensors"], "is a file, not a directory"),
    Case("train-json-unwritable-before-training", ["train", "--json", "@afile/train.json"], "is a file, not a directory"),
    Case("train-data-nan", ["train", "--data", "@nan.npz"], "NaN"),
    # certify
    Case("certify-sigma-zero", ["certify", "--sigma", "0"], "--sigma must be > 0"),
    Case("certify-n0-above-n", ["certify", "--n", "100", "--n0", "200"], "--n0 must be in"),
    Case("certify-alpha-two", ["certify", "--alpha", "2"], "--alpha must be in (0, 1)"),
    Case("certify-n-zero", ["certify", "--n", "0"], "--n must be >= 1"),
    Case("certify-batch-size-zero", ["certify", "--batch-size", "0"], "--batch-size must be >= 1"),
    Case("certify-executor-bogus", ["certify", "--executor", "bogus"], "--executor bogus"),
    Case("certify-workers-zero", ["certify", "--workers", "0"], "--workers must be >= 1"),
    Case("certify-threads-zero", ["certify", "--threads", "0"], "--threads must be >= 1"),
    # poison
    Case("poison-rate-zero", ["poison", "badnets", "--rate", "0"], "rate"),
    Case("poison-rate-two", ["poison", "badnets", "--rate", "2"], "rate"),
    Case("poison-target-out-of-range", ["poison", "badnets", "--target", "12"], "--target 12"),
    Case("poison-unknown-name", ["poison", "trojan"], "unknown poisoning"),
    Case("poison-out-missing", ["poison", "badnets"], "--out DIR is required", outputs=False),
    Case("poison-out-is-a-file", ["poison", "badnets", "--out", "@afile"], "not a directory"),
    Case("poison-patch-too-big", ["poison", "badnets", "--size", "9"], "does not fit"),
    Case("poison-rate-poisons-no-row", ["poison", "badnets", "--limit", "1"], "poisons no row"),
    # inspect
    Case("inspect-unknown-method", ["inspect", "bogus"], "unknown inspection"),
    Case("inspect-epochs-zero", ["inspect", "neural-cleanse", "--model", M, "--epochs", "0"], "epochs"),
    # audit
    Case("audit-missing-config", ["audit", "@absent.yaml"], "no such config file"),
    Case("audit-config-not-a-mapping", ["audit", "@list.yaml"], "must be a mapping"),
    Case("audit-config-unknown-key", ["audit", "@unknown.yaml"], "unknown key 'frobnicate'"),
    Case("audit-no-attacks", ["audit", "@noattacks.yaml"], "at least one attack", process=True),
    Case("audit-no-eps", ["audit", "@noeps.yaml"], "at least one budget"),
    Case("audit-config-not-utf8", ["audit", "@latin1.yaml"], "not UTF-8"),
    Case("audit-config-invalid-yaml", ["audit", "@invalid.yaml"], "not valid YAML"),
    Case("audit-config-is-a-directory", ["audit", "@norun"], "cannot read"),
    Case("audit-out-holds-a-run", ["audit", "--out", "@held"], "already holds a run"),
    Case("audit-out-is-a-file", ["audit", "--out", "@afile"], "not a directory"),
    Case("audit-executor-bogus", ["audit", "--executor", "bogus"], "--executor bogus"),
    Case("audit-workers-zero", ["audit", "--workers", "0"], "--workers must be >= 1"),
    Case("audit-threads-zero", ["audit", "--threads", "0"], "--threads must be >= 1"),
    Case("audit-address-without-ray", ["audit", "--address", "ray://head:10001"], "use it with --executor ray"),
    Case("audit-config-model-missing", ["audit", "@missingmodel.yaml"], "no such file"),
    Case("audit-budget-zero", ["audit", "--budget", "0"], "--budget must be a positive number of minutes"),
    Case("audit-budget-too-small", ["audit", "--budget", "0.001"], "even after every cut"),
    # steal
    Case("steal-unknown-name", ["steal", "bogus"], "unknown extraction"),
    Case("steal-seed-size-zero", ["steal", "papernot", "--model", M, "--seed-size", "0"], "--seed-size must be in"),
    Case("steal-max-queries-zero", ["steal", "knockoff", "--model", M, "--max-queries", "0"], "--max-queries"),
    Case("steal-arch-bogus", ["steal", "knockoff", "--model", M, "--arch", "bogus"], "unknown architecture 'bogus'"),
    Case("steal-transfer-attack-bogus", ["steal", "papernot", "--model", M, "--transfer-attack", "bogus"], "unknown evasion"),
    # report
    Case("report-no-report-json", ["report", "@norun"], "no such report"),
    Case("report-malformed-report-json", ["report", "@badreport"], "invalid JSON"),
    Case("report-not-an-advkit-report", ["report", "@otherreport"], "not an advkit audit report"),
    Case("report-format-pdf", ["report", "@norun", "--format", "pdf"], "--format must be html, md or sarif"),
    # provenance verify (exit 1 means "files changed"; bad input is still 2)
    Case("provenance-missing-manifest", ["provenance", "verify", "@absent.json"], "no such manifest"),
    Case("provenance-malformed-manifest", ["provenance", "verify", "@badmanifest.json"], "invalid JSON", process=True),
    Case("provenance-manifest-without-files", ["provenance", "verify", "@nofiles.json"], "no 'files' list"),
    Case("provenance-manifest-is-a-directory", ["provenance", "verify", "@norun"], "is a directory"),
    Case("provenance-manifest-not-utf8", ["provenance", "verify", "@binary.json"], "not UTF-8"),
    # list and the command line itself
    Case("list-family-bogus", ["list", "--family", "bogus"], "--family must be one of"),
    Case("unknown-command", ["scan-everything"], "No such command"),
]


def _resolve(argv: list[str], fx: Path) -> list[str]:
    return [str(fx / a[1:]) if a.startswith("@") else a for a in argv]


def _with_outputs(case: Case, argv: list[str]) -> list[str]:
    """Point each output at a file that already exists (or a directory that does not).

    They go right after the command name, so a case's own last option keeps its meaning.
    """
    if not case.outputs:
        return argv
    command, rest = argv[0], argv[1:]
    added: list[str] = []
    if command in JSON_COMMANDS and "--json" not in rest:
        added += ["--json", "keep.json"]
    if command == "train" and "--out" not in rest:
        added += ["--out", "model.safetensors"]
    if command in ("poison", "audit") and "--out" not in rest:
        added += ["--out", "out-dir"]
    return [command, *added, *rest]


def _tree(*roots: Path) -> dict[str, int]:
    """Every path under the roots with its size (directories as -1)."""
    found: dict[str, int] = {}
    for root in roots:
        for path in root.rglob("*"):
            found[str(path)] = -1 if path.is_dir() else path.stat().st_size
    return found


def _run_in_process(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str, str, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", ResourceWarning)  # hidden by Python's default filters (numpy leaks one on a bad zip)
        try:
            main(argv)
            code: int | str | None = 0
        except SystemExit as exc:
            code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err, [f"{w.category.__name__}: {w.message}" for w in caught]


def _run_process(argv: list[str], cwd: Path) -> tuple[int, str, str, list[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "advkit.cli", *argv], cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "80"}
    )
    return proc.returncode, proc.stdout, proc.stderr, []


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input_ends_in_one_line(case: Case, fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    if case.id.startswith("model-onnx") and not (fx / "flat784.onnx").is_file():
        pytest.skip("onnx is not installed")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep.json").write_bytes(KEEP)
    (tmp_path / "model.safetensors").write_bytes(MODEL_BYTES)
    argv = _with_outputs(case, _resolve(case.argv, fx))
    before = _tree(tmp_path, fx)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)

    if case.process:
        code, stdout, stderr, caught = _run_process(argv, tmp_path)
    else:
        code, stdout, stderr, caught = _run_in_process(argv, capsys)

    lines = stderr.rstrip("\n").split("\n")
    assert code == 2, f"exit {code}; stderr: {stderr}"
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert case.needle in lines[0], lines[0]
    assert "Traceback" not in stdout + stderr
    assert not caught, f"warnings: {caught}"
    assert "allow_pickle" not in lines[0]
    assert _tree(tmp_path, fx) == before, "a file was written, removed or changed"
    assert (tmp_path / "keep.json").read_bytes() == KEEP
    assert (tmp_path / "model.safetensors").read_bytes() == MODEL_BYTES


def test_cases_are_many_and_distinct() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    assert len({(tuple(c.argv), c.needle) for c in CASES}) == len(CASES)
    assert len(CASES) >= 45
    commands = {c.argv[0] for c in CASES}
    assert {"attack", "train", "certify", "poison", "inspect", "audit", "steal", "report", "provenance", "list"} <= commands


def test_permission_error_anywhere_is_one_line(fx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Root ignores permission bits, so the refusal is simulated where a file is hashed."""
    import advkit.data.provenance as provenance

    target = tmp_path / "weights.bin"
    target.write_bytes(b"weights")
    manifest = tmp_path / "provenance.json"
    manifest.write_text(json.dumps({"version": 1, "files": [{"role": "model", "path": str(target), "sha256": "0" * 64}]}))

    def refuse(path: object) -> str:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(provenance, "sha256_file", refuse)
    code, stdout, stderr, _ = _run_in_process(["provenance", "verify", str(manifest)], capsys)
    assert code == 2 and stderr == f"error: {target}: Permission denied\n"
    assert "Traceback" not in stdout + stderr


def test_check_writable_leaves_nothing_and_allows_new_folders(tmp_path: Path) -> None:
    from advkit.errors import AdvkitError
    from advkit.fileio import check_writable

    check_writable(tmp_path / "new" / "deeper" / "r.json", "--json")  # folders are made when written
    check_writable(tmp_path / "run", "--out", directory=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(AdvkitError, match="not a directory"):
        check_writable(tmp_path / "f", "--out", directory=True)
    with pytest.raises(AdvkitError, match="is a file, not a directory"):
        check_writable(tmp_path / "f" / "sub" / "r.json", "--json")
