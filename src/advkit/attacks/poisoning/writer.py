"""Write a poisoned training set to disk, with a manifest of what was changed.

A poisoned set is a directory of two files:

- ``poisoned.npz``: ``x_train``/``y_train`` (the poisoned split), ``x_test``/``y_test``
  (the clean test split) and ``classes``, so ``--data DIR/poisoned.npz`` reads it back;
  a backdoor adds the triggered test rows (``x_test_triggered``, ``y_test_backdoor``) and
  the trigger itself (``trigger_mask``, ``trigger_pattern``);
- ``manifest.json``: the attack and its parameters, the source data, the poisoned rows
  and their original labels, the poison rate and the SHA-256 of ``poisoned.npz``.

Both are written to a temporary name and renamed, so a failed run leaves no half file.
:func:`write_backdoor` writes a backdoor's set (BadNets, blend), :func:`poison_pacd`
crafts PACD poisons against a surrogate victim and writes them; :func:`save_poisoned`
is the writer both use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from advkit.attacks.poisoning.backdoor import BackdoorPoisoning
    from advkit.attacks.poisoning.clean_label import CleanLabel
    from advkit.attacks.poisoning.pacd import PACD
    from advkit.core import PoisonedData
    from advkit.data.dataset import Dataset
    from advkit.models.train import Progress

POISONED_FILE = "poisoned.npz"
MANIFEST_FILE = "manifest.json"


def save_poisoned(
    out_dir: Path,
    data: str,
    train_set: Dataset,
    test_set: Dataset,
    poisoned: PoisonedData,
    attack: str,
    params: dict[str, Any],
    arrays: dict[str, torch.Tensor],
    extra: dict[str, Any],
) -> Path:
    """DIR/poisoned.npz (readable by ``--data``) and DIR/manifest.json; returns the npz path.

    ``data`` names the source in the manifest, ``arrays`` are extra arrays stored in the
    npz and ``extra`` extra manifest keys (before ``files``).
    """
    import numpy as np

    from advkit.fileio import atomic_path, sha256_file, write_json

    npz = out_dir / POISONED_FILE
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                x_train=poisoned.x.numpy(),
                y_train=poisoned.y.numpy(),
                x_test=test_set.x.numpy(),
                y_test=test_set.y.numpy(),
                **{k: v.numpy() for k, v in arrays.items()},
                classes=np.array(train_set.classes),
            )
    manifest = {
        "attack": attack,
        "params": params,
        "source": data,
        "rows": len(poisoned.y),
        "poisoned_rows": poisoned.rows,
        "original_labels": [int(v) for v in poisoned.original_y[poisoned.poisoned].tolist()],
        "rate": poisoned.rate,
        **extra,
        "files": {POISONED_FILE: sha256_file(npz)},
    }
    write_json(out_dir / MANIFEST_FILE, manifest)
    return npz


def write_backdoor(out_dir: Path, data: str, train_set: Dataset, test_set: Dataset, poisoned: PoisonedData, attack: BackdoorPoisoning | CleanLabel) -> Path:
    """A backdoor's set: the poisoned split plus the triggered test rows and the trigger itself.

    Any attack with a ``trigger``, a ``target`` and (default all-to-one) a ``mode``: BadNets,
    blend, the clean-label backdoor. The triggered test rows leave out the target class for
    all-to-one backdoors (a row already of the target class says nothing about the
    trigger). Returns the npz path.
    """
    from advkit.attacks.poisoning.backdoor import backdoor_labels

    mode = getattr(attack, "mode", "all-to-one")
    mask, pattern = attack.trigger.mask_and_pattern(train_set.input_shape)
    keep = test_set.y != attack.target if mode == "all-to-one" else torch.ones_like(test_set.y, dtype=torch.bool)
    triggered = attack.trigger.apply(test_set.x[keep])
    backdoor_y = backdoor_labels(test_set.y[keep], attack.target, mode, train_set.num_classes)
    arrays = {
        "x_test_triggered": triggered, "y_test_backdoor": backdoor_y, "trigger_mask": mask, "trigger_pattern": pattern,
    }
    return save_poisoned(out_dir, data, train_set, test_set, poisoned, attack.name, attack.params(), arrays, {})


def poison_pacd(
    out_dir: Path,
    data: str,
    train_set: Dataset,
    test_set: Dataset,
    attack: PACD,
    arch: str | None,
    seed: int,
    progress: Progress | None = None,
) -> tuple[PoisonedData, Path]:
    """Craft PACD poisons and write them; returns the poisoned data and the npz path.

    The surrogate victim is a fresh ``arch`` network (default: the zoo architecture for
    the image size) seeded ``seed + 1000``; the attacker's validation rows are the target
    class in the first half of the test split.
    """
    from advkit.models import build
    from advkit.models.recipes import default_arch

    c, h, _ = train_set.input_shape
    arch = arch or default_arch(h)
    surrogate = build(arch, in_channels=c, num_classes=train_set.num_classes, image_size=h, seed=seed + 1000)
    half = len(test_set) // 2
    poisoned = attack(
        surrogate, train_set.x, train_set.y, test_set.x[:half], test_set.y[:half],
        generator=torch.Generator().manual_seed(seed), progress=progress,
    )
    npz = save_poisoned(
        out_dir, data, train_set, test_set, poisoned, "pacd", {**poisoned.params, "target": attack.target, "arch": arch},
        {}, {"attacker_validation": f"{data}:test rows 0..{half - 1} of class {attack.target}"},
    )
    return poisoned, npz


__all__ = ["MANIFEST_FILE", "POISONED_FILE", "poison_pacd", "save_poisoned", "write_backdoor"]
