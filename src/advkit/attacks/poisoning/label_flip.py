"""Label-flipping poisoning: random, class-pair and loss-maximising flips of training labels.

An indiscriminate (accuracy-degrading) attack that changes only labels: a share ``rate``
of the training rows get another class, their pixels are left as they are. Three methods:

- ``random``: the rows are drawn uniformly and each gets a uniformly drawn other class:
  the random label noise baseline of Biggio, Nelson & Laskov, "Support Vector Machines
  Under Adversarial Label Noise", ACML 2011.
- ``pair``: rows of a ``source`` class are relabelled as the ``target`` class (the
  source-to-target flips of Tolpegin, Truex, Gursoy & Liu, "Data Poisoning Attacks
  Against Federated Learning Systems", ESORICS 2020). Without a pair the attack takes
  the pair a clean surrogate confuses most: the largest ``sum_{i: y_i = s} p_t(x_i)``
  over the training rows, among source classes with enough rows for the budget.
- ``loss``: the flips that maximise the loss of the classifier trained on the tainted
  labels, measured on the attacker's validation rows (by default the training rows with
  their true labels, the objective of Xiao, Xiao & Eckert, "Adversarial Label Flips
  Attack on Support Vector Machines", ECAI 2012). The inner training is unrolled and
  differentiated, as in Muñoz-González et al., "Towards Poisoning of Deep Learning
  Algorithms with Back-gradient Optimization", AISec 2017 (who reverse the training
  steps to save memory; here autograd keeps the short unrolled graph).

Formulation of ``loss``. The relaxed labels are a soft label matrix ``P`` (row ``i`` a
distribution over the classes) in the convex hull of the label matrices that flip
exactly ``k = round(rate * N)`` rows: ``P_i = (1 - w_i) e_{y_i} + w_i q_i`` with flip
weights ``0 <= w_i <= 1``, ``sum_i w_i = k`` and ``q_i`` a distribution over the other
classes. The surrogate (the victim's architecture, freshly initialised: grey box) is
trained for ``unroll`` SGD steps on ``sum_i sum_c P_ic CE(f(x_i), c) / N`` =
``mean_i (1 - w_i) CE(f(x_i), y_i) + w_i sum_c q_ic CE(f(x_i), c)``; the validation
cross-entropy of the trained parameters is differentiated with respect to ``P`` through
the unrolled steps and climbed by Frank–Wolfe (conditional gradient) steps: the
linearised gain of flipping row ``i`` to class ``c`` is ``G_ic - G_iy_i`` (``G`` the
gradient), so the best vertex flips the ``k`` rows of largest gain each to its best
class, and ``P <- P + 2/(t + 2) (vertex - P)`` stays in the budget without a projection.
After every step ``P`` is rounded to a discrete flip set of exactly ``k`` rows (the
largest ``w_i``, each to its ``argmax_c q_ic``); the rounding with the largest
validation loss under the same unrolled training is returned.

Simplifications: the unrolled training is short plain (full-batch by default) SGD from
one initialisation, not the victim's full recipe; a longer, minibatch Adam unroll fitted
its own batch order and transferred worse to the victim. The surrogate runs in eval mode
(no dropout; BatchNorm with its initial statistics). If the clean unrolled training does
not lower its loss at every step, the inner learning rate is halved until it does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from advkit.core import PoisonedData
from advkit.errors import AdvkitError
from advkit.models.architectures import build
from advkit.registry import register

Progress = Callable[[str, int, int], None]
METHODS = ("random", "pair", "loss")
_LR_HALVINGS = 8


def flip_budget(rate: float, rows: int) -> int:
    """The number of rows a ``rate`` in (0, 1) flips: ``round(rate * rows)``; none is an error."""
    if not 0.0 < rate < 1.0:
        raise AdvkitError(f"label flip rate must be in (0, 1); got {rate}")
    count = int(round(rate * rows))
    if count == 0:
        raise AdvkitError(f"label flip rate {rate} of {rows} rows flips no row")
    return count


def random_flips(y: Tensor, count: int, num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` rows drawn uniformly, each with a uniformly drawn other class."""
    rows = torch.randperm(y.shape[0], generator=generator)[:count]
    shift = torch.randint(1, num_classes, (count,), generator=generator)
    return rows, (y[rows] + shift) % num_classes


def pair_flips(y: Tensor, count: int, source: int, target: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``count`` rows of class ``source``, drawn uniformly, relabelled ``target``."""
    eligible = (y == source).nonzero().squeeze(1)
    if eligible.numel() < count:
        raise AdvkitError(f"pair flip needs {count} rows of source class {source}; the data has {eligible.numel()}")
    rows = eligible[torch.randperm(eligible.numel(), generator=generator)[:count]]
    return rows, torch.full((count,), target, dtype=y.dtype)


def most_confused_pair(probabilities: Tensor, y: Tensor, min_rows: int) -> tuple[int, int]:
    """The ``(s, t)``, ``s != t``, of largest ``sum_{i: y_i = s} p_t(x_i)``, ``s`` with >= ``min_rows`` rows."""
    num_classes = probabilities.shape[1]
    confusion = torch.zeros(num_classes, num_classes, dtype=probabilities.dtype).index_add_(0, y, probabilities)
    confusion.fill_diagonal_(-1.0)
    counts = torch.bincount(y, minlength=num_classes)
    confusion[counts < min_rows] = -1.0
    if float(confusion.max()) < 0:
        raise AdvkitError(f"pair flip needs a class with {min_rows} rows; the largest has {int(counts.max())}")
    source, target = divmod(int(confusion.argmax()), num_classes)
    return source, target


def flip_gains(grad: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, the best other class by ``grad`` and its gain ``grad_c - grad_y`` (the linearised loss increase)."""
    own = grad.gather(1, y.view(-1, 1)).squeeze(1)
    best = grad.scatter(1, y.view(-1, 1), float("-inf")).max(1)
    return best.values - own, best.indices


def round_soft_labels(soft: Tensor, y: Tensor, count: int) -> Tensor:
    """The ``count`` rows of most flipped mass ``1 - P_iy``, each to its most likely other class."""
    flipped_mass = 1.0 - soft.gather(1, y.view(-1, 1)).squeeze(1)
    rows = flipped_mass.topk(count).indices
    labels = y.clone()
    labels[rows] = soft[rows].scatter(1, y[rows].view(-1, 1), float("-inf")).argmax(1)
    return labels


class UnrolledTraining:
    """``steps`` SGD steps of a surrogate on soft labels, as a function of those labels.

    ``network`` gives the architecture and the initial parameters (it is copied, put in
    eval mode and never changed). ``batch_size`` ``None`` trains on all rows each step.
    """

    def __init__(self, network: nn.Module, steps: int, lr: float, batch_size: int | None = None) -> None:
        self.network = copy.deepcopy(network).eval()
        self.initial = {name: p.detach().clone() for name, p in self.network.named_parameters()}
        self.device = next(iter(self.initial.values())).device
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size

    def logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.network, params, (x.to(self.device),))

    def train(
        self, x: Tensor, soft: Tensor, generator: torch.Generator, *, differentiable: bool, losses: list[float] | None = None
    ) -> dict[str, Tensor]:
        """The parameters after the steps; ``differentiable`` keeps the graph back to ``soft``."""
        params = {name: p.clone().requires_grad_(True) for name, p in self.initial.items()}
        rows = x.shape[0]
        for _ in range(self.steps):
            if self.batch_size is None or self.batch_size >= rows:
                xb, pb = x, soft
            else:
                idx = torch.randint(0, rows, (self.batch_size,), generator=generator)
                xb, pb = x[idx], soft[idx]
            loss = -(pb.to(self.device) * torch.log_softmax(self.logits(params, xb), 1)).sum(1).mean()
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=differentiable)
            params = {name: p - self.lr * g for (name, p), g in zip(params.items(), grads)}
            if not differentiable:
                params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
            if losses is not None:
                losses.append(float(loss.detach()))
        return params

    def descends(self, x: Tensor, soft: Tensor) -> bool:
        """Whether the training stays finite and lowers its loss (full batch: at every step)."""
        losses: list[float] = []
        params = self.train(x, soft, torch.Generator().manual_seed(0), differentiable=False, losses=losses)
        with torch.no_grad():
            first = self.full_loss(self.initial, x, soft)
            final = self.full_loss(params, x, soft)
        if not all(torch.isfinite(torch.tensor([*losses, first, final]))) or not final < first:
            return False
        if self.batch_size is not None and self.batch_size < x.shape[0]:
            return True
        steps = [*losses, final]
        return all(b <= a * (1 + 1e-6) for a, b in zip(steps, steps[1:]))

    def full_loss(self, params: dict[str, Tensor], x: Tensor, soft: Tensor) -> float:
        return float(-(soft.to(self.device) * torch.log_softmax(self.logits(params, x), 1)).sum(1).mean())


def surrogate_network(surrogate: str | nn.Module, shape: tuple[int, int, int], num_classes: int, seed: int) -> nn.Module:
    """The surrogate: an architecture name built for ``shape`` (``logreg`` fits any shape), or a given module."""
    if isinstance(surrogate, nn.Module):
        return surrogate
    channels, height, width = shape
    if height == width:
        return build(surrogate, in_channels=channels, num_classes=num_classes, image_size=height, seed=seed)
    if surrogate != "logreg":
        raise AdvkitError(f"surrogate {surrogate!r} needs square images; got {height}x{width} (use logreg or pass a module)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))


@register(
    "labelflip",
    family="poisoning",
    knowledge="data",
    paper="Xiao, Xiao, Eckert. Adversarial Label Flips Attack on Support Vector Machines. ECAI 2012",
    atlas="AML.T0020",
    summary="flip a share of training labels: random, one class to another, or loss-maximising (grey box: unrolled surrogate)",
)
@dataclass
class LabelFlip:
    """Relabel ``rate`` of the training rows by ``method`` (``random``, ``pair`` or ``loss``).

    ``pair``: ``(source, target)``; ``None`` takes the pair a clean surrogate confuses
    most. ``surrogate`` (``pair`` without a pair, and ``loss``): an architecture name
    (default ``logreg``) or an untrained module whose parameters start the unrolled
    training. ``loss`` settings: ``steps`` Frank–Wolfe steps, each through ``unroll``
    SGD steps of learning rate ``inner_lr`` on ``inner_batch`` rows (``None``: all).
    """

    rate: float = 0.05
    method: str = "random"
    pair: tuple[int, int] | None = None
    surrogate: str | nn.Module = "logreg"
    steps: int = 30
    unroll: int = 20
    inner_lr: float = 0.5
    inner_batch: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise AdvkitError(f"label flip method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if not 0.0 < self.rate < 1.0:
            raise AdvkitError(f"label flip rate must be in (0, 1); got {self.rate}")
        if self.pair is not None:
            try:
                source, target = (int(c) for c in self.pair)
            except (TypeError, ValueError):
                source = target = -1
            if source == target:
                raise AdvkitError(f"label flip pair must be two different classes (source, target); got {self.pair}")
            self.pair = (source, target)
        if min(self.steps, self.unroll) < 1 or (self.inner_batch is not None and self.inner_batch < 1):
            raise AdvkitError("label flip steps, unroll and inner_batch must be >= 1")
        if not self.inner_lr > 0:
            raise AdvkitError(f"label flip inner_lr must be > 0; got {self.inner_lr}")

    @property
    def knowledge(self) -> str:
        """``data`` for random and pair flips; ``grey`` for ``loss`` (architecture and validation rows)."""
        return "grey" if self.method == "loss" else "data"

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "rate": self.rate, "pair": list(self.pair) if self.pair else None}
        if self.method == "loss" or (self.method == "pair" and self.pair is None):
            name = self.surrogate if isinstance(self.surrogate, str) else type(self.surrogate).__name__
            out.update(surrogate=name, unroll=self.unroll, inner_lr=self.inner_lr, inner_batch=self.inner_batch)
        if self.method == "loss":
            out["steps"] = self.steps
        return out

    def __call__(
        self,
        x: Tensor,
        y: Tensor,
        *,
        num_classes: int | None = None,
        x_val: Tensor | None = None,
        y_val: Tensor | None = None,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> PoisonedData:
        """Flip labels of ``(x, y)``; ``x_val``/``y_val``: the ``loss`` method's validation rows (default: ``x, y``)."""
        num_classes = self._check(x, y, num_classes)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        count = flip_budget(self.rate, y.shape[0])
        params = self.params()
        params["flips"] = count
        target: int | None = None
        if self.method == "random":
            rows, labels = random_flips(y, count, num_classes, generator)
        elif self.method == "pair":
            pair = self.pair
            if pair is None:
                training = self._training(x, num_classes, generator)
                pair = self._confused_pair(training, x, y, num_classes, count, generator)
                params["inner_lr"] = training.lr
            if not all(0 <= c < num_classes for c in pair):
                raise AdvkitError(f"label flip pair {list(pair)} has a class outside 0..{num_classes - 1}")
            rows, labels = pair_flips(y, count, pair[0], pair[1], generator)
            params["pair"], params["pair_chosen_by"] = list(pair), "given" if self.pair else "surrogate confusion"
            target = pair[1]
        else:
            x_val, y_val = self._validation(x, y, x_val, y_val, num_classes)
            training = self._training(x, num_classes, generator)
            new_y, found = self._loss_flips(training, x, y, x_val, y_val, num_classes, count, generator, progress)
            rows = (new_y != y).nonzero().squeeze(1)
            labels = new_y[rows]
            params.update(found, inner_lr=training.lr, validation_rows=int(y_val.shape[0]))
        poisoned = torch.zeros(y.shape[0], dtype=torch.bool)
        poisoned[rows] = True
        y_out = y.clone()
        y_out[rows] = labels.to(y.dtype)
        return PoisonedData(x.clone(), y_out, poisoned, y.clone(), "labelflip", target, params)

    def _check(self, x: Tensor, y: Tensor, num_classes: int | None) -> int:
        if x.dim() != 4 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise AdvkitError(f"label flip needs images [N, C, H, W] and N labels; got {list(x.shape)} and {list(y.shape)}")
        if y.shape[0] == 0:
            raise AdvkitError("cannot flip labels of an empty dataset")
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise AdvkitError(f"label flip needs integer labels; got {y.dtype}")
        num_classes = int(num_classes) if num_classes is not None else int(y.max()) + 1
        if num_classes < 2:
            raise AdvkitError(f"label flip needs at least 2 classes; got {num_classes}")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise AdvkitError(f"labels must be in 0..{num_classes - 1}; got {int(y.min())}..{int(y.max())}")
        return num_classes

    def _validation(
        self, x: Tensor, y: Tensor, x_val: Tensor | None, y_val: Tensor | None, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        if (x_val is None) != (y_val is None):
            raise AdvkitError("label flip: give both x_val and y_val, or neither")
        if x_val is None or y_val is None:
            return x, y
        if x_val.dim() != 4 or tuple(x_val.shape[1:]) != tuple(x.shape[1:]) or y_val.shape != (x_val.shape[0],):
            raise AdvkitError(f"validation rows must be images of shape {list(x.shape[1:])} with one label each; got {list(x_val.shape)} and {list(y_val.shape)}")
        if x_val.shape[0] == 0:
            raise AdvkitError("label flip: the validation set is empty")
        if int(y_val.min()) < 0 or int(y_val.max()) >= num_classes:
            raise AdvkitError(f"validation labels must be in 0..{num_classes - 1}")
        return x_val, y_val.long()

    def _training(self, x: Tensor, num_classes: int, generator: torch.Generator) -> UnrolledTraining:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        network = surrogate_network(self.surrogate, tuple(x.shape[1:]), num_classes, seed)  # type: ignore[arg-type]
        return UnrolledTraining(network, self.unroll, self.inner_lr, self.inner_batch)

    @staticmethod
    def _descending(training: UnrolledTraining, x: Tensor, soft: Tensor) -> None:
        """Halve the inner learning rate until the clean unrolled training descends."""
        for _ in range(_LR_HALVINGS):
            if training.descends(x, soft):
                return
            training.lr /= 2
        raise AdvkitError(f"the surrogate's unrolled training does not descend even at inner_lr {training.lr * 2:g}")

    def _confused_pair(
        self, training: UnrolledTraining, x: Tensor, y: Tensor, num_classes: int, count: int, generator: torch.Generator
    ) -> tuple[int, int]:
        soft = F.one_hot(y.long(), num_classes).float()
        self._descending(training, x, soft)
        params = training.train(x, soft, generator, differentiable=False)
        with torch.no_grad():
            probabilities = torch.softmax(training.logits(params, x), 1).cpu()
        return most_confused_pair(probabilities, y.long(), count)

    def _loss_flips(
        self,
        training: UnrolledTraining,
        x: Tensor,
        y: Tensor,
        x_val: Tensor,
        y_val: Tensor,
        num_classes: int,
        count: int,
        generator: torch.Generator,
        progress: Progress | None,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Frank–Wolfe ascent of the validation loss over the relaxed flips; the best rounding."""
        y = y.long()
        y_val_dev = y_val.to(training.device)
        clean = F.one_hot(y, num_classes).float()
        self._descending(training, x, clean)

        def validation_loss(soft: Tensor, differentiable: bool) -> Tensor:
            params = training.train(x, soft, generator, differentiable=differentiable)
            with torch.enable_grad() if differentiable else torch.no_grad():
                return F.cross_entropy(training.logits(params, x_val), y_val_dev)

        clean_loss = float(validation_loss(clean, False))
        soft = clean.clone()
        best_loss, best_labels = float("-inf"), y
        for step in range(self.steps):
            soft.requires_grad_(True)
            (grad,) = torch.autograd.grad(validation_loss(soft, True), soft)
            with torch.no_grad():
                gains, labels = flip_gains(grad.cpu(), y)
                rows = gains.topk(count).indices
                vertex = clean.clone()
                vertex[rows] = F.one_hot(labels[rows], num_classes).float()
                soft = soft.detach() + 2.0 / (step + 2) * (vertex - soft.detach())
            candidate = round_soft_labels(soft, y, count)
            loss = float(validation_loss(F.one_hot(candidate, num_classes).float(), False))
            if loss > best_loss:
                best_loss, best_labels = loss, candidate
            if progress is not None:
                progress("labelflip", step + 1, self.steps)
        return best_labels, {"val_loss_clean": clean_loss, "val_loss_poisoned": best_loss}
