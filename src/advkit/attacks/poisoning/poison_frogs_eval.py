"""Does a Poison Frogs attack work? Retrain the victim on clean + poisons, ask it about the target.

Shafahi et al., "Poison Frogs! Targeted Clean-Label Poisoning Attacks on Neural Networks",
NeurIPS 2018, evaluate two victims (section 4):

- **transfer learning** (``setting="transfer"``): the feature extractor is frozen and only
  the last layer is retrained on the clean training set + the poisons. Here the last
  ``nn.Linear`` is retrained on the frozen penultimate features (computed once), by
  default from the trained weights (``init="warm"``, the authors' "hot" start; ``"cold"``
  re-initialises the layer), to convergence: its cross-entropy is convex and is minimised
  full batch with L-BFGS. The authors' code (``train_last_layer_of_inception``) runs 100
  epochs of mini-batch Adam for the same end; on mnist-cnn features a warm-started layer
  needed ~800 full-batch Adam steps to reach what L-BFGS reaches in ~50 evaluations, and
  20 epochs of mini-batch Adam (lr 0.01, batch 32) left every target unflipped: the single
  poison only moves a layer that is trained until it fits it.
- **end to end** (``setting="end-to-end"``): the whole network is fine-tuned from its
  trained weights on clean + poisons (:func:`advkit.models.finetune.fine_tune`: SGD with
  momentum 0.9, one-cycle schedule, BatchNorm statistics frozen; 3 epochs at lr 0.01 here).

The attack succeeds when the retrained model classifies the target image as the base class.
:func:`poison_success` measures one (victim, poisons, target) triple; the clean test accuracy
of the retrained model is reported too (the attack should leave it unchanged).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from advkit.attacks.poisoning.poison_frogs import PenultimateFeatures, last_linear
from advkit.core import ModelHandle, PoisonedData
from advkit.errors import AdvkitError
from advkit.metrics import accuracy

SETTINGS = ("transfer", "end-to-end")
INITS = ("warm", "cold")


@dataclass
class PoisonOutcome:
    """The retrained victim's answer on the target image.

    ``success``: it predicts the base class; ``base_probability``: its softmax for that
    class; ``clean_accuracy(_before)``: on ``x_eval`` after / before retraining (None
    without it); ``feature_distance``: the smallest ``||f(p) - f(t)||`` over the poisons in
    the *retrained* victim's feature space (end to end, fine-tuning moves the features).
    """

    setting: str
    success: bool
    target_prediction: int
    target_class: int
    base_class: int
    base_probability: float
    clean_accuracy: float | None
    clean_accuracy_before: float | None
    feature_distance: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _features(extractor: PenultimateFeatures, x: Tensor, device: torch.device, batch: int = 1024) -> Tensor:
    with torch.no_grad():
        return torch.cat([extractor(x[i : i + batch].to(device)) for i in range(0, x.shape[0], batch)])


def retrain_last_layer(
    model: ModelHandle,
    x: Tensor,
    y: Tensor,
    *,
    init: str = "warm",
    max_iter: int = 100,
    seed: int = 0,
) -> ModelHandle:
    """A copy of ``model`` whose last ``nn.Linear`` is retrained on ``(x, y)``, all else frozen.

    The layer's cross-entropy on the frozen features is convex; it is minimised full batch
    with L-BFGS (strong Wolfe line search) for up to ``max_iter`` iterations, from the
    trained weights (``init="warm"``) or a fresh PyTorch initialisation seeded by ``seed``
    (``"cold"``).
    """
    import torch.nn.functional as F

    if init not in INITS:
        raise AdvkitError(f"poison-frogs: init must be one of {', '.join(INITS)}; got {init!r}")
    if max_iter < 1:
        raise AdvkitError(f"poison-frogs: max_iter must be >= 1; got {max_iter}")
    victim = ModelHandle(copy.deepcopy(model.net), model.info, device=model.device)
    head = last_linear(victim.network)
    extractor = PenultimateFeatures(victim.network, head)
    with victim.eval_mode():
        feats = _features(extractor, x, victim.device)
    labels = y.to(victim.device)
    layer = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None).to(victim.device)
    if init == "warm":
        layer.load_state_dict(head.state_dict())
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layer.reset_parameters()
    solver = torch.optim.LBFGS(
        layer.parameters(), lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(layer(feats), labels)
        loss.backward()
        return loss

    solver.step(closure)
    with torch.no_grad():
        head.weight.copy_(layer.weight)
        if head.bias is not None and layer.bias is not None:
            head.bias.copy_(layer.bias)
    victim.network.eval()
    return victim


def fine_tune_network(model: ModelHandle, x: Tensor, y: Tensor, *, epochs: int = 3, lr: float = 0.01, seed: int = 0) -> ModelHandle:
    """A copy of ``model`` fine-tuned end to end on ``(x, y)`` (:func:`advkit.models.finetune.fine_tune`)."""
    from advkit.models.finetune import fine_tune

    return fine_tune(model, x, y, epochs=epochs, lr=lr, seed=seed).handle


def _accuracy(model: ModelHandle, x: Tensor | None, y: Tensor | None) -> float | None:
    if x is None or y is None:
        return None
    return accuracy(model.predict(x).cpu(), y.cpu())


def poison_success(
    model: ModelHandle,
    poisoned: PoisonedData,
    target_x: Tensor,
    *,
    setting: str = "transfer",
    x_eval: Tensor | None = None,
    y_eval: Tensor | None = None,
    init: str = "warm",
    max_iter: int = 100,
    epochs: int = 3,
    lr: float = 0.01,
    seed: int = 0,
) -> PoisonOutcome:
    """Retrain ``model`` on ``poisoned`` (``setting``) and classify ``target_x`` (one image, [C, H, W] or [1, C, H, W]).

    ``poisoned`` is a Poison Frogs result (its ``params`` give the target and base classes).
    ``x_eval``/``y_eval`` (e.g. the clean test split) give the clean accuracy before and
    after retraining. ``init``/``max_iter`` apply to the transfer setting, ``epochs``/``lr``
    to end-to-end fine-tuning.
    """
    if setting not in SETTINGS:
        raise AdvkitError(f"poison-frogs: setting must be one of {', '.join(SETTINGS)}; got {setting!r}")
    if "base_class" not in poisoned.params or "target_class" not in poisoned.params:
        raise AdvkitError("poison-frogs: poison_success needs a Poison Frogs PoisonedData (params with base_class and target_class)")
    target_x = target_x.unsqueeze(0) if target_x.dim() == 3 else target_x
    if target_x.shape[0] != 1 or tuple(target_x.shape[1:]) != tuple(model.input_shape):
        raise AdvkitError(f"poison-frogs: the target must be one image of shape {list(model.input_shape)}; got {list(target_x.shape)}")
    base_class = int(poisoned.params["base_class"])
    if setting == "transfer":
        victim = retrain_last_layer(model, poisoned.x, poisoned.y, init=init, max_iter=max_iter, seed=seed)
    else:
        victim = fine_tune_network(model, poisoned.x, poisoned.y, epochs=epochs, lr=lr, seed=seed)
    probs = torch.softmax(victim.predict_logits(target_x).float(), 1)[0].cpu()
    prediction = int(probs.argmax())
    extractor = PenultimateFeatures(victim.network)
    with victim.eval_mode():
        feats = _features(extractor, torch.cat([target_x, poisoned.x[poisoned.poisoned]]), victim.device)
    distance = float((feats[1:] - feats[0]).norm(dim=1).min())
    return PoisonOutcome(
        setting=setting,
        success=prediction == base_class,
        target_prediction=prediction,
        target_class=int(poisoned.params["target_class"]),
        base_class=base_class,
        base_probability=float(probs[base_class]),
        clean_accuracy=_accuracy(victim, x_eval, y_eval),
        clean_accuracy_before=_accuracy(model, x_eval, y_eval),
        feature_distance=distance,
    )


__all__ = ["INITS", "SETTINGS", "PoisonOutcome", "fine_tune_network", "poison_success", "retrain_last_layer"]
