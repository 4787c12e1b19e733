"""Steinhardt et al.'s min-max poisons against a sanitised linear learner, and its certificate.

Steinhardt, Koh & Liang, "Certified Defenses for Data Poisoning Attacks", NeurIPS 2017,
Algorithm 1: an indiscriminate attack appending ``n_poison = rate * N`` rows that survive
the defender's sphere + slab sanitisation (:mod:`advkit.defenses.data.sanitize`) and raise
the loss of the linear learner trained on the sanitised set. Online learning on the game

    min_{||theta|| <= rho}  max_{(x, y) in F}  L(theta; D_clean) + eps * l(theta; x, y)

alternates the attacker's best response (the feasible point and label of largest loss
under ``theta``) with one dual-averaging step of the learner (``z -= g``,
``lambda = max(1/eta, ||z||/rho)``, ``theta = z / lambda``, as in the reference code). The
poisons are iterates drawn after a burn-in, as the reference code does. Every ``theta`` of
the ball gives ``L(theta; D_clean) + eps * max_F l(theta)`` as an upper bound of the game;
the smallest seen is the paper's ``U*``, a bound on the defended learner's clean training loss.

- Learner: advkit's ``logreg`` (multinomial logistic regression ``W vec(x) + b``, not the
  paper's hinge SVM); ``rho`` defaults to the norm of ``(W, b)`` of a ``logreg`` trained on
  the clean kept rows with ``advkit train``'s recipe (30 epochs, Adam, lr 2e-3): the
  white-box attacker knows the learner and its recipe.
- Feasible set: the *oracle* defender's (the paper's section 4): centroids and thresholds
  from the clean rows (:meth:`SphereSlab.fit`, the defender's ``remove`` share) within the
  pixel bounds; poisons sit at ``1 - slack`` of the thresholds, so that sanitiser keeps
  them all. Clean rows it removes are left out of ``L(theta; D_clean)``.
- Best response: per label ``y`` and rival ``k`` the convex ``max_{x in F_y} <w_k - w_y, x>``
  is solved exactly (a 2-D Lagrangian dual: the ball's multiplier by sorting box
  breakpoints, the slab's by root finding) for the pairs of largest closed-form bound, and
  the candidate of largest cross-entropy is kept. For two classes the cross-entropy is
  monotone in that margin, so this is the exact maximiser (as for the paper's SVM); for
  ``K > 2`` ``log(1 + sum_k exp(max margin_k))`` still bounds it, so ``U*`` stays valid.
- For ``K > 2`` the slab is the class-centroid-to-overall-centroid line (see the sanitiser).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from advkit.core import PoisonedData
from advkit.defenses.data.sanitize import DEFAULT_REMOVE, METHODS, SphereSlab, check_methods
from advkit.errors import AdvkitError
from advkit.registry import register

Progress = Callable[[str, int, int], None]
_NU_STEPS = 60


def _ball_box_argmax(g: Tensor, mu: Tensor, radius: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    """Per row, ``argmax <g, x>`` over ``{lo <= x <= hi, ||x - mu|| <= radius}`` and its multiplier.

    It is ``clip(mu + g / lam)``, ``lam`` the root of the decreasing ``||clip(mu + g/lam) - mu||
    = radius``, found exactly by sorting the breakpoints ``|g_i| / room_i`` where coordinate
    ``i`` reaches the box. ``lam`` is floored at ``1e-7 ||g||`` (not 0 when the whole box vertex
    fits in the ball) so the point stays continuous in ``g`` for the slab's root search.
    """
    room = torch.where(g > 0, hi - mu, torch.where(g < 0, mu - lo, torch.zeros_like(mu))).clamp_min(0.0)
    absg = g.abs()
    breaks = torch.where(absg > 0, absg / room, torch.zeros_like(absg))  # inf where the box is already hit
    b_sorted, order = breaks.sort(dim=1, descending=True)
    g_sq = absg.gather(1, order) ** 2
    total = g_sq.sum(1, keepdim=True)
    # segment k (k = 0..D-1): the first k sorted coordinates sit on the box, lam in [b_(k+1), b_(k)]
    c_k = (room.gather(1, order) ** 2).cumsum(1) - room.gather(1, order) ** 2
    g_k = total - g_sq.cumsum(1) + g_sq
    at_lower = torch.where(b_sorted > 0, c_k + g_k / b_sorted.clamp_min(1e-300) ** 2, torch.where(g_k > 0, torch.inf, c_k))
    r2 = (radius**2).unsqueeze(1)
    reaches = at_lower >= r2
    k_star = reaches.float().argmax(1, keepdim=True)
    lam = torch.sqrt(g_k.gather(1, k_star) / (r2 - c_k.gather(1, k_star)).clamp_min(1e-300))
    floor = 1e-7 * total.sqrt()
    lam = torch.where(reaches.any(1, keepdim=True), torch.maximum(lam, floor), floor).clamp_min(1e-300)
    return (mu + g / lam).clamp(lo, hi), lam.squeeze(1)


def maximize_linear(
    c: Tensor, mu: Tensor, direction: Tensor, radius: Tensor, width: Tensor, bounds: tuple[float, float] = (0.0, 1.0)
) -> tuple[Tensor, Tensor]:
    """Per row, ``argmax <c, x>`` over ``box ∩ {||x - mu|| <= radius} ∩ {|<x - mu, direction>| <= width}``.

    Rows of ``c``, ``mu``, ``direction`` ([B, D], ``direction`` unit or zero) and
    ``radius``/``width`` ([B]; ``inf`` drops that constraint) are separate problems; ``mu``
    must lie in the box. The slab's multiplier ``nu`` (objective ``c - nu * direction``) is
    the root of the monotone ``<x(nu) - mu, direction> = width``, found by the Illinois
    method with bisection steps, keeping the feasible end. Returns the feasible points and
    the Lagrangian dual value at the multipliers found, an upper bound of
    ``max <c, x - mu>`` whatever the root search's accuracy.
    """
    lo, hi = bounds
    radius = torch.where(torch.isinf(radius), torch.full_like(radius, (hi - lo) * math.sqrt(c.shape[1]) + 1.0), radius)
    x, lam = _ball_box_argmax(c, mu, radius, lo, hi)
    along = ((x - mu) * direction).sum(1)
    a, nu = torch.where((along < 0).unsqueeze(1), -direction, direction), torch.zeros_like(along)
    todo = (along.abs() > width).nonzero().squeeze(1)
    if todo.numel():
        x, lam, nu = x.clone(), lam.clone(), nu.clone()
        x[todo], lam[todo], nu[todo] = _slab_root(c[todo], mu[todo], a[todo], radius[todo], width[todo], lo, hi)
    offset = x - mu
    slab_term = torch.where(nu > 0, nu * (width - (offset * a).sum(1)), torch.zeros_like(nu))
    upper = (c * offset).sum(1) + lam / 2 * (radius**2 - (offset**2).sum(1)) + slab_term
    return _pull_inside(x, mu, direction, radius, width), upper


def _slab_root(c: Tensor, mu: Tensor, a: Tensor, radius: Tensor, width: Tensor, lo: float, hi: float) -> tuple[Tensor, Tensor, Tensor]:
    """The slab's multiplier for rows whose ball ∩ box optimum overshoots ``<x - mu, a> <= width``."""

    def solve(nu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        point, lam = _ball_box_argmax(c - nu.unsqueeze(1) * a, mu, radius, lo, hi)
        return point, lam, ((point - mu) * a).sum(1) - width

    low, high = torch.zeros_like(width), c.norm(dim=1).clamp_min(1e-12)
    best, best_lam, f_high = solve(high)
    for _ in range(60):  # grow the bracket until its upper end is feasible
        grow = f_high > 0
        if not bool(grow.any()):
            break
        low, high = torch.where(grow, high, low), torch.where(grow, high * 2, high)
        best, best_lam, f_high = solve(high)
    f_low = solve(low)[2]
    last = torch.zeros_like(width)  # +1: high moved last, -1: low moved last
    for step in range(_NU_STEPS):  # Illinois: regula falsi that halves a stale end; f(low) > 0 >= f(high)
        mid = high - f_high * (high - low) / (f_high - f_low).clamp_max(-1e-300)
        bisect = (step % 4 == 3) | ~((mid > low) & (mid < high))
        mid = torch.where(bisect, (low + high) / 2, mid)
        point, lam, f_mid = solve(mid)
        ok = f_mid <= 0
        f_low = torch.where(ok & (last > 0), f_low / 2, f_low)
        f_high = torch.where(~ok & (last < 0), f_high / 2, f_high)
        high, f_high = torch.where(ok, mid, high), torch.where(ok, f_mid, f_high)
        low, f_low = torch.where(ok, low, mid), torch.where(ok, f_low, f_mid)
        last = torch.where(ok, torch.ones_like(last), -torch.ones_like(last))
        best, best_lam = torch.where(ok.unsqueeze(1), point, best), torch.where(ok, lam, best_lam)
        if bool((f_high > -1e-4 * width.clamp_min(1e-12)).all()):  # within 1e-4 of the slab's face
            break
    return best, best_lam, high


def _pull_inside(x: Tensor, mu: Tensor, direction: Tensor, radius: Tensor, width: Tensor) -> Tensor:
    """Move rows toward ``mu`` just enough to meet both constraints (a guard on rounding)."""
    offset = x - mu
    dist, along = offset.norm(dim=1).clamp_min(1e-300), (offset * direction).sum(1).abs().clamp_min(1e-300)
    return mu + (radius / dist).clamp_max(1.0).minimum((width / along).clamp_max(1.0)).unsqueeze(1) * offset


def relaxed_gain(c: Tensor, mu: Tensor, direction: Tensor, radius: Tensor, width: Tensor, bounds: tuple[float, float]) -> Tensor:
    """Per row, an upper bound of ``max <c, x - mu>`` on the feasible set, in closed form.

    The smaller of two relaxations: the box alone (``sum_i max(c_i (hi - mu_i), c_i (lo - mu_i))``)
    and the ball ∩ slab without the box (``r ||c||`` when the ball's optimum is inside the slab,
    else ``w |c_a| + sqrt(r^2 - w^2) ||c_perp||`` with ``c_a = <c, direction>``).
    """
    lo, hi = bounds
    box = torch.maximum(c * (hi - mu), c * (lo - mu)).sum(1)
    norm = c.norm(dim=1)
    along = (c * direction).sum(1).abs()
    perp = (norm**2 - along**2).clamp_min(0.0).sqrt()
    in_slab = radius * along <= width * norm
    ball = torch.where(in_slab, radius * norm, width * along + (radius**2 - width**2).clamp_min(0.0).sqrt() * perp)
    return torch.minimum(box, torch.where(torch.isfinite(ball), ball, torch.full_like(ball, torch.inf)))


@dataclass
class Game:
    """The min-max game on the flat clean kept rows: best responses and bounds at a linear ``theta``.

    ``eps`` is poison rows per clean kept row; poisons sit at ``1 - slack`` of the thresholds.
    """

    x_clean: Tensor
    y_clean: Tensor
    defense: SphereSlab
    methods: tuple[str, ...]
    eps: float
    bounds: tuple[float, float] = (0.0, 1.0)
    slack: float = 1e-3
    exact_pairs: int = 4

    def __post_init__(self) -> None:  # (label, rival): labels of the classes with clean rows, rivals all others
        labels = self.defense.present.nonzero().squeeze(1).tolist()
        self.pairs = torch.tensor([(a, b) for a in labels for b in range(self.defense.num_classes) if a != b], dtype=torch.long)

    def clean_gradient(self, weight: Tensor, bias: Tensor) -> tuple[float, Tensor, Tensor]:
        """Mean cross-entropy on the clean rows (in their precision) and its gradient in ``(weight, bias)``."""
        x, y = self.x_clean, self.y_clean
        logits = x @ weight.T.to(x.dtype) + bias.to(x.dtype)
        p = torch.softmax(logits, 1)
        loss = torch.nn.functional.cross_entropy(logits, y)
        p[torch.arange(y.shape[0]), y] -= 1.0
        p /= y.shape[0]
        return float(loss), (p.T @ x).to(weight.dtype), p.sum(0).to(weight.dtype)

    def best_response(self, weight: Tensor, bias: Tensor) -> tuple[Tensor, int, float, float]:
        """The feasible point and label of largest cross-entropy under ``(weight, bias)``.

        Each (label ``y``, rival ``k``) margin problem ``max_{x in F_y} <w_k - w_y, x>`` is
        bounded in closed form (:func:`relaxed_gain`); the ``exact_pairs`` with the largest
        bounds are solved (:func:`maximize_linear`) and the candidate of largest cross-entropy
        is the best response. Returns it, its label, its cross-entropy and
        ``max_y log(1 + sum_k exp(M_yk))`` with ``M_yk`` the dual bound where solved, else the
        closed-form one: an upper bound of the cross-entropy on ``F``.
        """
        pairs = self.pairs
        y, k = pairs[:, 0], pairs[:, 1]
        inf = torch.full((pairs.shape[0],), torch.inf, dtype=torch.float64)
        radius = self.defense.sphere_radii[y] * (1 - self.slack) if "sphere" in self.methods else inf
        width = self.defense.slab_widths[y] * (1 - self.slack) if "slab" in self.methods else inf
        c = weight[k] - weight[y]
        mu, direction = self.defense.centroids[y], self.defense.directions[y]
        offset = (c * mu).sum(1) + bias[k] - bias[y]
        margins = offset + relaxed_gain(c, mu, direction, radius, width, self.bounds)
        solve = margins.topk(min(self.exact_pairs, pairs.shape[0])).indices
        x, upper = maximize_linear(c[solve], mu[solve], direction[solve], radius[solve], width[solve], self.bounds)
        margins[solve] = torch.minimum(margins[solve], offset[solve] + upper)
        losses = torch.nn.functional.cross_entropy(x @ weight.T + bias, y[solve], reduction="none")
        pick = int(losses.argmax())
        per_label = torch.full((self.defense.num_classes,) * 2, -torch.inf, dtype=torch.float64)
        per_label[y, k] = margins
        bound = torch.log1p(torch.exp(per_label[torch.isfinite(per_label).any(1)]).sum(1)).max()
        return x[pick], int(y[solve[pick]]), float(losses[pick]), float(bound)

    def value_bound(self, weight: Tensor, bias: Tensor) -> tuple[float, float]:
        """``L(theta; D_clean) + eps * max_F l(theta)`` (an upper bound of the game's value) and its clean part."""
        clean = self.clean_gradient(weight, bias)[0]
        return clean + self.eps * self.best_response(weight, bias)[3], clean


@dataclass
class MinMaxRun:
    """The online run: every iterate's best response and the certificate ``U*``."""

    points: Tensor
    labels: Tensor
    upper_bound: float
    upper_bound_clean_loss: float
    objective: list[float]


def _norm(weight: Tensor, bias: Tensor) -> float:
    return math.sqrt(float((weight**2).sum() + (bias**2).sum()))


def minmax_run(
    game: Game, *, rho: float, eta: float, iterations: int, init: tuple[Tensor, Tensor] | None = None,
    progress: Progress | None = None,
) -> MinMaxRun:
    """Algorithm 1 of the paper: dual averaging of a norm-``rho`` linear learner against best responses.

    ``init`` (``weight`` [K, D], ``bias`` [K]) starts the learner there instead of at 0
    (the reference code's ``init_w``/``init_b``): its dual state is ``init * lambda_0``.
    """
    k, d = game.defense.num_classes, game.x_clean.shape[1]
    weight = torch.zeros(k, d, dtype=torch.float64) if init is None else init[0].detach().double()
    bias = torch.zeros(k, dtype=torch.float64) if init is None else init[1].detach().double()
    lam, shrink = 1.0 / eta, min(1.0, rho / max(_norm(weight, bias), 1e-300))
    weight, bias = weight * shrink, bias * shrink
    z_w, z_b = weight * lam, bias * lam
    points, labels = torch.zeros(iterations, d, dtype=torch.float64), torch.zeros(iterations, dtype=torch.long)
    best, best_clean, history = math.inf, math.inf, []
    for t in range(iterations):
        point, label, _, bound = game.best_response(weight, bias)
        clean_loss, g_w, g_b = game.clean_gradient(weight, bias)
        history.append(clean_loss + game.eps * bound)
        if history[-1] < best:
            best, best_clean = history[-1], clean_loss
        p = torch.softmax(weight @ point + bias, 0) - torch.nn.functional.one_hot(torch.tensor(label), k)
        points[t], labels[t] = point, label
        z_w -= g_w + game.eps * torch.outer(p, point)
        z_b -= g_b + game.eps * p
        lam = max(lam, _norm(z_w, z_b) / rho)
        weight, bias = z_w / lam, z_b / lam
        if progress is not None:
            progress("steinhardt", t + 1, iterations)
    return MinMaxRun(points, labels, best, best_clean, history)


@register(
    "steinhardt",
    family="poisoning",
    knowledge="white",
    paper="Steinhardt, Koh, Liang. Certified Defenses for Data Poisoning Attacks. NeurIPS 2017",
    atlas="AML.T0020",
    summary="min-max poisons inside the sphere + slab feasible set that degrade a linear learner (with the paper's loss bound)",
)
@dataclass
class Steinhardt:
    """Append ``round(rate * N)`` poison rows against a sphere + slab sanitised ``logreg``.

    ``methods``/``remove`` describe the defender (:func:`advkit.defenses.data.sanitize`);
    ``iterations`` online steps with learning rate ``eta``, the first ``burn_in``
    (default a quarter) discarded, the poisons drawn from the rest; ``norm_bound`` is
    ``rho`` (default: the clean ``logreg``'s norm, trained ``victim_epochs`` at
    ``victim_lr``). The result has ``N + n_poison`` rows; ``poisoned`` marks the appended
    rows and ``original_y`` holds, for them, the label the attacker gave them.
    """

    rate: float = 0.03
    methods: tuple[str, ...] = METHODS
    remove: float = DEFAULT_REMOVE
    iterations: int = 800
    burn_in: int | None = None
    eta: float = 0.1
    norm_bound: float | None = None
    victim_epochs: int = 30
    victim_lr: float = 2e-3
    slack: float = 1e-3
    exact_pairs: int = 4
    warm_start: bool = False
    bounds: tuple[float, float] = (0.0, 1.0)
    name = "steinhardt"

    def __post_init__(self) -> None:
        if not 0.0 < self.rate < 1.0:
            raise AdvkitError(f"steinhardt: rate (poison rows per clean row) must be in (0, 1); got {self.rate}")
        self.methods = check_methods(self.methods)
        if not 0.0 <= self.remove < 1.0:
            raise AdvkitError(f"steinhardt: remove (the defender's share) must be in [0, 1); got {self.remove}")
        if self.iterations < 1 or (self.burn_in is not None and not 0 <= self.burn_in < self.iterations):
            raise AdvkitError(f"steinhardt: need iterations >= 1 and 0 <= burn_in < iterations; got {self.iterations}, {self.burn_in}")
        positive = self.eta > 0 and math.isfinite(self.eta) and (self.norm_bound is None or self.norm_bound > 0) and self.victim_lr > 0
        if not positive or not 0.0 <= self.slack < 1.0 or min(self.victim_epochs, self.exact_pairs) < 1 or not self.bounds[0] < self.bounds[1]:
            raise AdvkitError("steinhardt: need eta, norm_bound, victim_lr > 0, slack in [0, 1), victim_epochs, exact_pairs >= 1, lo < hi")

    def __call__(
        self, x: Tensor, y: Tensor, *, num_classes: int | None = None, generator: torch.Generator | None = None,
        progress: Progress | None = None,
    ) -> PoisonedData:
        started = time.perf_counter()
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        x, y, k = self._check(x, y, num_classes)
        n_poison = int(round(self.rate * x.shape[0]))
        if n_poison < 1:
            raise AdvkitError(f"steinhardt: rate {self.rate} of {x.shape[0]} rows makes no poison row")
        flat = x.reshape(x.shape[0], -1)
        defense = SphereSlab.fit(flat, y, num_classes=k, remove=self.remove)
        if int(defense.present.sum()) < 2:
            raise AdvkitError("steinhardt: the training rows must hold at least two classes")
        kept = defense.feasible(flat, y, self.methods)
        clean = self._clean_model(x[kept], y[kept], k, generator) if self.warm_start or self.norm_bound is None else None
        rho = self.norm_bound if self.norm_bound is not None else float(torch.cat([clean[0].flatten(), clean[1]]).norm())  # type: ignore[index]
        game = Game(flat[kept], y[kept], defense, self.methods, n_poison / int(kept.sum()), self.bounds, self.slack, self.exact_pairs)
        run = minmax_run(game, rho=rho, eta=self.eta, iterations=self.iterations, init=clean if self.warm_start else None, progress=progress)
        upper_bound, upper_clean = run.upper_bound, run.upper_bound_clean_loss
        if clean is not None:  # the clean model (norm <= rho) bounds the game too
            scale = min(1.0, rho / _norm(*clean))
            value, clean_part = game.value_bound(clean[0] * scale, clean[1] * scale)
            if value < upper_bound:
                upper_bound, upper_clean = value, clean_part
        burn = self.iterations // 4 if self.burn_in is None else self.burn_in
        pool = torch.arange(burn, self.iterations)
        picks = torch.randperm(pool.numel(), generator=generator)[:n_poison] if pool.numel() >= n_poison else None
        chosen = pool[picks if picks is not None else torch.randint(0, pool.numel(), (n_poison,), generator=generator)]
        points, labels = run.points[chosen], run.labels[chosen]
        poisons = points.to(x.dtype)
        if not bool(defense.feasible(poisons, labels, self.methods).all()):  # rounding guard, never expected
            raise RuntimeError("steinhardt: a poison left the feasible set")
        x_out, y_out = torch.cat([x, poisons.reshape(n_poison, *x.shape[1:])]), torch.cat([y, labels])
        poisoned = torch.arange(x_out.shape[0]) >= x.shape[0]
        settings = ("rate", "remove", "iterations", "eta", "slack", "warm_start")
        params: dict[str, Any] = {name: getattr(self, name) for name in settings}
        params.update(
            n_poison=n_poison, n_clean=int(x.shape[0]), defender="oracle", methods=list(self.methods),
            clean_rows_kept=int(kept.sum()), burn_in=burn, norm_bound=float(rho),
            distinct_poisons=int(torch.unique(torch.cat([points, labels.unsqueeze(1).double()], 1), dim=0).shape[0]),
            poison_labels=[int(c) for c in torch.bincount(labels, minlength=k)],
            upper_bound=upper_bound, upper_bound_clean_loss=upper_clean, seconds=time.perf_counter() - started,
        )
        return PoisonedData(x_out, y_out, poisoned, y_out.clone(), self.name, None, params)

    def _check(self, x: Tensor, y: Tensor, num_classes: int | None) -> tuple[Tensor, Tensor, int]:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise AdvkitError("steinhardt: images must be a float tensor [N, C, H, W]")
        lo, hi = self.bounds
        if x.numel() == 0 or not bool(torch.isfinite(x).all()) or float(x.min()) < lo - 1e-6 or float(x.max()) > hi + 1e-6:
            raise AdvkitError(f"steinhardt: images must be non-empty, finite and inside the bounds [{lo:g}, {hi:g}]")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() or y.dtype == torch.bool:
            raise AdvkitError(f"steinhardt: labels must be {x.shape[0]} integers in a 1-D tensor")
        y, k = y.long(), int(y.max()) + 1 if num_classes is None else int(num_classes)
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise AdvkitError(f"steinhardt: labels must be in 0..{k - 1}; got {int(y.min())}..{int(y.max())}")
        return x.float(), y, k

    def _clean_model(self, x: Tensor, y: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(W, b)`` of a ``logreg`` trained on the clean kept rows with the victim's recipe."""
        from advkit.models.train import TrainConfig, fit

        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            linear = torch.nn.Linear(x[0].numel(), k)
        fit(torch.nn.Sequential(torch.nn.Flatten(), linear), x, y, TrainConfig(epochs=self.victim_epochs, lr=self.victim_lr, seed=seed))
        return linear.weight.detach().double(), linear.bias.detach().double()


__all__ = ["Game", "MinMaxRun", "Steinhardt", "maximize_linear", "minmax_run", "relaxed_gain"]
