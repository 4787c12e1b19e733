"""The audit's training steps: models made by retraining the architecture or fine-tuning the given model.

Adversarial training, the poisoned model of each backdoor scenario, certified training
and denoised smoothing's denoiser. With ``training: fine-tune`` in a step's inputs the
model is a fine-tuned copy of the audited one (:mod:`advkit.models.finetune`), else a
fresh copy of its architecture trained with ``advkit train``'s recipe.
"""

from __future__ import annotations

from typing import Any

import torch

from advkit.audit.config import ACCURACY_ATTACKS
from advkit.audit.plan import scenario_of, scenario_trigger
from advkit.audit.workspace import StepContext
from advkit.core import ModelInfo
from advkit.data import Dataset
from advkit.errors import AdvkitError


def _trainable(ctx: StepContext, purpose: str) -> tuple[str, ModelInfo]:
    info = ctx.env.model().info
    if not info.arch:
        raise AdvkitError(
            f"{purpose} retrains the model's architecture, but {ctx.env.config.model} does not name one "
            "(TorchScript/ONNX): set training: fine-tune (or auto) in the config, or give metadata with 'arch'"
        )
    return info.arch, info


def _fine_tuning(ctx: StepContext) -> bool:
    return ctx.step.inputs.get("training") == "fine-tune"


def _train_rows(ctx: StepContext) -> Dataset:
    """The defender's training rows: the train split, its first ``fine_tune.rows`` when fine-tuning."""
    train = ctx.env.train_data()
    return train.head(ctx.env.config.fine_tune.rows) if _fine_tuning(ctx) else train


def train_model(ctx: StepContext, x: torch.Tensor, y: torch.Tensor, defense: str, epochs: int | None, metadata: dict[str, Any], name: str, **recipe: Any) -> dict[str, Any]:
    """Make a trained model and save it: a fresh copy of the audited architecture trained
    with the recipe ``advkit train`` uses, or (``training: fine-tune``) a fine-tuned copy
    of the audited model itself (:mod:`advkit.models.finetune`)."""
    from advkit.models import save_model

    path = ctx.artifact(f"{name}.safetensors")
    if _fine_tuning(ctx):
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

        arch, info = _trainable(ctx, metadata.get("objective", "training"))
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
    train = _train_rows(ctx)
    metadata = {"objective": cfg.defense, "eps": cfg.eps}
    name = f"fine-tuned-{cfg.defense}" if _fine_tuning(ctx) else cfg.defense
    result = train_model(ctx, train.x, train.y, cfg.defense, cfg.epochs, metadata, name, eps=cfg.eps, norm=ctx.env.config.evasion.norm)
    result.update({"defense": cfg.defense, "eps": cfg.eps})
    return result


def poisoning(ctx: StepContext) -> dict[str, Any]:
    """Poison the train split, train the architecture on it, measure the backdoor."""
    from advkit.attacks.poisoning import backdoor_success_rate

    from advkit.audit import poisoning_steps

    scenario = scenario_of(ctx.step.inputs)
    if scenario.attack == "trojannet":  # no data: the audited model is wrapped
        return poisoning_steps.trojannet(ctx, scenario)
    train = _train_rows(ctx)
    if scenario.attack == "poison-frogs":  # the audited model itself, retrained in part or fine-tuned
        return poisoning_steps.poison_frogs(ctx, scenario, train)
    info = ctx.env.model().info if _fine_tuning(ctx) else _trainable(ctx, "the poisoning scenario")[1]
    if scenario.attack in ACCURACY_ATTACKS:
        return poisoning_steps.accuracy_poisoning(ctx, scenario, train, info.num_classes)
    if scenario.attack == "gradient-matching":
        return poisoning_steps.gradient_matching(ctx, scenario, train)
    attack = scenario_trigger(scenario)
    if scenario.target >= info.num_classes:
        raise AdvkitError(f"poisoning target {scenario.target} is outside the model's classes 0..{info.num_classes - 1}")
    if scenario.attack == "clean-label":  # the attacker hardens the target-class rows on the audited model
        poisoned = attack(ctx.env.model(), train.x, train.y, num_classes=info.num_classes, bounds=info.bounds, generator=ctx.generator)
    else:
        poisoned = attack(train.x, train.y, num_classes=info.num_classes, bounds=info.bounds, generator=ctx.generator)
    name = ctx.step.id.split("/", 1)[1]
    result = train_model(ctx, poisoned.x, poisoned.y, "standard", None, {"objective": "standard", "poisoned": attack.name}, f"poisoned-{name}")
    data = ctx.env.eval_data()
    result.update(
        {
            "attack": attack.name,
            "params": attack.params(),
            "poisoned_rows": len(poisoned.rows),
            "train_rows": len(train),
            "attack_success_rate": backdoor_success_rate(ctx.env.trained_model_from(result["artifact"]), data.x, data.y, attack.trigger, scenario.target, scenario.mode),
            "audited_model_trigger_success": backdoor_success_rate(ctx.env.model(), data.x, data.y, attack.trigger, scenario.target, scenario.mode),
        }
    )
    mask, pattern = attack.trigger.mask_and_pattern(info.input_shape, info.bounds)
    result["trigger_l1"] = float(mask.sum())
    return result


def certified_training(ctx: StepContext) -> dict[str, Any]:
    """Train a copy of the audited architecture with a certified-training objective."""
    cfg = ctx.env.config.certification
    assert cfg is not None and cfg.training is not None
    train = _train_rows(ctx)
    metadata = {"objective": cfg.training, "sigma": cfg.sigma}
    name = f"fine-tuned-{cfg.training}" if _fine_tuning(ctx) else f"certified-{cfg.training}"
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
