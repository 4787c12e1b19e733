"""The audit's training steps: models made by retraining the architecture or fine-tuning the given model.

Adversarial training, the poisoned model of each backdoor scenario, certified training
and denoised smoothing's denoiser. With ``training: fine-tune`` in a step's inputs the
model is a fine-tuned copy of the audited one (:mod:`advkit.models.finetune`), else a
fresh copy of its architecture trained with ``advkit train``'s recipe.
"""

from __future__ import annotations

from typing import Any

import torch

from advkit.audit.workspace import StepContext
from advkit.core import ModelInfo
from advkit.data import Dataset
from advkit.errors import AdvkitError


def trainable(ctx: StepContext, purpose: str) -> tuple[str, ModelInfo]:
    info = ctx.env.model().info
    if not info.arch:
        raise AdvkitError(
            f"{purpose} retrains the model's architecture, but {ctx.env.config.model} does not name one "
            "(TorchScript/ONNX): set training: fine-tune (or auto) in the config, or give metadata with 'arch'"
        )
    return info.arch, info


def fine_tuning(ctx: StepContext) -> bool:
    return ctx.step.inputs.get("training") == "fine-tune"


def train_rows(ctx: StepContext) -> Dataset:
    """The defender's training rows: the train split, its first ``fine_tune.rows`` when fine-tuning."""
    train = ctx.env.train_data()
    return train.head(ctx.env.config.fine_tune.rows) if fine_tuning(ctx) else train


def train_model(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, defense: str, epochs: int | None, metadata: dict[str, Any], name: str, **recipe: Any) -> dict[str, Any]:
    """Make a trained model and save it: a fresh copy of the audited architecture trained
    with the recipe ``advkit train`` uses, or (``training: fine-tune``) a fine-tuned copy
    of the audited model itself (:mod:`advkit.models.finetune`)."""
    from advkit.models import save_model

    path = ctx.artifact(f"{name}.safetensors")
    if fine_tuning(ctx):
        from advkit.models.finetune import fine_tune, save_fine_tuned

        ft = ctx.env.config.fine_tune
        trained = fine_tune(
            ctx.env.model(), x, y, defense=defense, epochs=ft.epochs, lr=ft.lr, seed=ctx.env.config.seed, metadata=metadata,
            precision=ctx.env.config.precision, progress=ctx.env.progress, **recipe
        )
        save_fine_tuned(trained.handle, path)
        how = {"training": "fine-tune", "epochs": ft.epochs, "train_rows_used": int(y.shape[0])}
    else:
        from advkit.models.recipes import train_recipe

        arch, info = trainable(ctx, metadata.get("objective", "training"))
        trained = train_recipe(
            arch, info, x, y, defense=defense, epochs=epochs, seed=ctx.env.config.seed, device=ctx.env.model().device, metadata=metadata,
            precision=ctx.env.config.precision, progress=ctx.env.progress, **recipe
        )
        save_model(trained.handle, path)
        how = {"training": "retrain", "epochs": trained.report.epochs, "train_rows_used": int(y.shape[0])}
    data = ctx.env.eval_data()
    return {"artifact": ctx.relative(path), "clean_accuracy": float((trained.handle.predict(data.x) == data.y).float().mean()), **how}


def adversarial_training(ctx: StepContext) -> dict[str, Any]:
    """Train a hardened copy of the audited architecture on the train split."""
    cfg = ctx.env.config.adversarial_training
    assert cfg is not None
    train = train_rows(ctx)
    metadata = {"objective": cfg.defense, "eps": cfg.eps}
    name = f"fine-tuned-{cfg.defense}" if fine_tuning(ctx) else cfg.defense
    result = train_model(ctx, train.x, train.y, cfg.defense, cfg.epochs, metadata, name, eps=cfg.eps, norm=ctx.env.config.evasion.norm)
    result.update({"defense": cfg.defense, "eps": cfg.eps})
    return result


def save_poisoned_rows(ctx: StepContext, poisoned: Any, name: str) -> str:
    """The rows a poisoning changed (indices into the defender's training rows, their pixels
    and labels) and every row's label, under ``artifacts/``: a data defense rebuilds the
    poisoned set from the train split with them (:func:`load_poisoned_set`)."""
    from advkit.fileio import save_arrays

    rows = poisoned.poisoned.nonzero().squeeze(1)
    path = ctx.artifact(name)
    save_arrays(path, rows=rows.numpy(), x_rows=poisoned.x[rows].cpu().numpy(), y=poisoned.y.cpu().numpy())
    return ctx.relative(path)


def load_poisoned_set(ctx: StepContext, relative: str, train: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x, y, poisoned mask)`` of a poisoning step's training set, rebuilt from ``train``."""
    import numpy as np

    with np.load(ctx.env.run_dir / relative, allow_pickle=False) as arrays:
        rows, x_rows, y = (torch.from_numpy(arrays[k]) for k in ("rows", "x_rows", "y"))
    if y.shape[0] != len(train):
        raise AdvkitError(f"{relative}: holds {y.shape[0]} rows but the defender's training rows are {len(train)}; rerun the poisoning step")
    x = train.x.clone()
    x[rows] = x_rows.to(x.dtype)
    mask = torch.zeros(len(train), dtype=torch.bool)
    mask[rows] = True
    return x, y.long(), mask


def certified_training(ctx: StepContext) -> dict[str, Any]:
    """Train a copy of the audited architecture with a certified-training objective."""
    cfg = ctx.env.config.certification
    assert cfg is not None and cfg.training is not None
    train = train_rows(ctx)
    metadata = {"objective": cfg.training, "sigma": cfg.sigma}
    name = f"fine-tuned-{cfg.training}" if fine_tuning(ctx) else f"certified-{cfg.training}"
    result = train_model(ctx, train.x, train.y, cfg.training, cfg.epochs, metadata, name, sigma=cfg.sigma)
    result.update({"defense": cfg.training, "sigma": cfg.sigma})
    return result


DENOISER_DEPTH, DENOISER_WIDTH = 6, 32  # a small DnCNN: about a ResNet-18's cost per pixel at 224 px


def denoiser_training(ctx: StepContext) -> dict[str, Any]:
    """Denoised smoothing (Salman et al., NeurIPS 2020): a denoiser trained in front of the frozen audited model.

    The model's weights never change; the denoiser learns, on the defender's training
    rows (no labels: the model's own predictions), to make noisy images classify as their
    clean versions. CERTIFY then smooths model(denoiser(.)) as the ``denoised`` model.
    """
    from advkit.certify.denoised import denoised_handle, save_denoiser, train_denoiser

    cfg = ctx.env.config.certification
    assert cfg is not None
    model = ctx.env.model()
    train = ctx.env.train_data().head(ctx.env.config.fine_tune.rows)
    report = train_denoiser(
        model.network, train.x, cfg.sigma, epochs=cfg.denoiser_epochs, depth=DENOISER_DEPTH, width=DENOISER_WIDTH,
        seed=ctx.env.config.seed, device=model.device, progress=ctx.env.progress,
    )
    path = save_denoiser(report.denoiser, ctx.artifact("denoiser.safetensors"), model, cfg.sigma)
    data = ctx.env.eval_data()
    denoised = denoised_handle(model, report.denoiser)
    return {
        "artifact": ctx.relative(path),
        "defense": "denoised-smoothing",
        "sigma": cfg.sigma,
        "epochs": cfg.denoiser_epochs,
        "objective": report.objective,
        "mse_epochs": report.mse_epochs,
        "denoiser": report.denoiser.settings(),
        "train_rows_used": len(train),
        "losses": report.losses,
        "clean_accuracy": float((denoised.predict(data.x) == data.y).float().mean()),
    }
