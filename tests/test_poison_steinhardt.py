"""Sphere/slab sanitisation and Steinhardt et al.'s min-max poisons (NeurIPS 2017).

Fast tests on digits: the sanitiser's thresholds and outlier removal, the feasible-set
solver against SciPy, the poisons' feasibility and format, the certificate against a
direct minimisation, and the attack against a retrained logreg versus as many random
label-noise rows. The mnist5k acceptance (3% poisons) is ``slow``.
"""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

from advkit.attacks.poisoning.steinhardt import Game, Steinhardt, maximize_linear
from advkit.data import load_dataset
from advkit.defenses.data import SphereSlab, SphereSlabSanitizer, sanitize
from advkit.errors import AdvkitError
from advkit.models import build
from advkit.models.train import TrainConfig, fit
from advkit.registry import lookup


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    return train.x, train.y, test.x, test.y


@pytest.fixture(scope="module")
def digits_poisons(digits):
    x, y, _, _ = digits
    return Steinhardt(rate=0.3, iterations=60)(x, y, generator=torch.Generator().manual_seed(0))


def _victim_accuracy(x, y, x_test, y_test, seeds=(0, 1), lr=1e-2) -> float:
    """Mean test accuracy of advkit's ``logreg`` trained from scratch on ``(x, y)``."""
    accs = []
    for seed in seeds:
        net = build("logreg", in_channels=x.shape[1], num_classes=10, image_size=x.shape[-1], seed=seed)
        fit(net, x, y, TrainConfig(epochs=30, lr=lr, seed=seed))
        with torch.no_grad():
            accs.append(float((net(x_test).argmax(1) == y_test).float().mean()))
    return sum(accs) / len(accs)


def test_sanitizer_thresholds_remove_far_outliers_and_keep_clean_rows(digits):
    x, y, _, _ = digits
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(30, 1, 8, 8, generator=g)  # uniform-noise images under random labels
    noise_y = torch.randint(0, 10, (30,), generator=g)
    xs, ys = torch.cat([x, noise]), torch.cat([y, noise_y])
    for reference in (None, (x, y)):  # the data-dependent and the oracle defender
        result = sanitize(xs, ys, reference=reference)
        assert not bool(result.keep[len(y):].any()), "every far outlier is removed"
        assert float(result.keep[: len(y)].float().mean()) > 0.85, "most clean rows are kept"
        assert set(result.details(ys)) >= {"rows", "rows_kept", "rows_removed", "removed_by_method", "removed_per_class"}
        json.dumps(result.details(ys))
    # the oracle thresholds are the 95th percentiles: each method removes about 5% of each clean class
    defense = SphereSlab.fit(x, y)
    removed = defense.removed(x, y)
    dists = defense.distances(x, y)
    for c in range(10):
        rows = y == c
        for method in ("sphere", "slab"):
            share = float(removed[method][rows].float().mean())
            assert 0.02 <= share <= 0.07, (c, method, share)
            assert bool((dists[method][rows & ~removed[method]] <= defense.thresholds(method)[c]).all())
    # a point moved from the centroid toward the overall centroid (inside the box) just past the slab,
    # still inside the sphere, is removed by the slab alone
    c = 0
    step = 1.05 * float(defense.slab_widths[c])
    assert step < float((x.reshape(len(y), -1).double().mean(0) - defense.centroids[c]).norm())
    inside = defense.centroids[c] - step * defense.directions[c]
    assert float(inside.min()) >= 0 and float(inside.max()) <= 1
    assert step < float(defense.sphere_radii[c])
    probe = inside.float().view(1, 1, 8, 8)
    only = sanitize(torch.cat([x, probe]), torch.cat([y, torch.tensor([c])]), reference=(x, y))
    assert bool(only.removed_by["slab"][-1]) and not bool(only.removed_by["sphere"][-1])
    assert bool(sanitize(torch.cat([x, probe]), torch.cat([y, torch.tensor([c])]), ("sphere",), reference=(x, y)).keep[-1])
    assert SphereSlabSanitizer(("slab",))(x, y).details()["methods"] == ["slab"]


def test_feasible_set_solver_matches_scipy():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    g = torch.Generator().manual_seed(1)
    rows, dim = 10, 8
    c = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    mu = torch.rand(rows, dim, generator=g, dtype=torch.float64) * 0.8 + 0.1
    mu[:, :2] = 0.0  # centroid pixels on the box, as MNIST's background
    a = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    a /= a.norm(dim=1, keepdim=True)
    radius = torch.rand(rows, generator=g, dtype=torch.float64) + 0.2
    width = torch.rand(rows, generator=g, dtype=torch.float64) * 0.3 + 0.02
    x, upper = maximize_linear(c, mu, a, radius, width)
    for i in range(rows):
        ci, mi, ai, ri, wi = (t[i].numpy() for t in (c, mu, a, radius, width))
        constraints = [
            {"type": "ineq", "fun": lambda v, m=mi, r=ri: float(r) ** 2 - float(np.sum((v - m) ** 2))},
            {"type": "ineq", "fun": lambda v, m=mi, d=ai, w=wi: float(w) - float(np.dot(v - m, d))},
            {"type": "ineq", "fun": lambda v, m=mi, d=ai, w=wi: float(w) + float(np.dot(v - m, d))},
        ]
        res = scipy_optimize.minimize(
            lambda v, cc=ci: -float(np.dot(cc, v)), mi, jac=lambda v, cc=ci: -cc, bounds=[(0, 1)] * dim,
            constraints=constraints, method="SLSQP", options={"maxiter": 500, "ftol": 1e-12},
        )
        reference = float(np.dot(ci, res.x))
        ours = float((c[i] * x[i]).sum())
        offset = x[i] - mu[i]
        assert float(x[i].min()) >= 0 and float(x[i].max()) <= 1
        assert float(offset.norm()) <= float(radius[i]) + 1e-9 and abs(float((offset * a[i]).sum())) <= float(width[i]) + 1e-9
        assert ours >= reference - 1e-4, (i, ours, reference)
        assert float(upper[i] + (c[i] * mu[i]).sum()) >= ours - 1e-9, "the dual value bounds the maximum"


def test_poisons_pass_the_sanitiser_and_are_appended(digits, digits_poisons):
    x, y, _, _ = digits
    p = digits_poisons
    n = p.params["n_poison"]
    assert n == round(0.3 * len(y)) and p.x.shape == (len(y) + n, *x.shape[1:]) and p.y.shape == (len(y) + n,)
    assert torch.equal(p.x[: len(y)], x) and torch.equal(p.y[: len(y)], y)
    assert p.rows == list(range(len(y), len(y) + n)) and torch.equal(p.original_y, p.y)
    poisons = p.x[len(y):]
    assert float(poisons.min()) >= 0.0 and float(poisons.max()) <= 1.0
    for methods in (("sphere", "slab"), ("sphere",), ("slab",)):
        assert bool(sanitize(p.x, p.y, methods, reference=(x, y)).keep[len(y):].all()), methods
    assert p.attack == "steinhardt" and p.target is None
    json.dumps(p.params)
    assert p.params["distinct_poisons"] <= n and sum(p.params["poison_labels"]) == n
    assert math.isfinite(p.params["upper_bound"]) and p.params["upper_bound"] > p.params["upper_bound_clean_loss"] > 0
    entry = lookup("steinhardt", "poisoning")
    assert entry.factory is Steinhardt and entry.knowledge == "white"
    small = Steinhardt(rate=0.03, iterations=20, norm_bound=5.0)
    first, again = (small(x, y, generator=torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(again.x, first.x) and torch.equal(again.y, first.y), "the same seed gives the same poisons"


def test_certificate_bounds_the_defended_learners_loss(digits, digits_poisons):
    """``U*`` bounds ``min_{||theta|| <= rho} L_clean + eps L_poison`` for the crafted poisons."""
    x, y, _, _ = digits
    p = digits_poisons
    flat = x.reshape(len(y), -1).double()
    defense = SphereSlab.fit(flat, y)
    kept = defense.feasible(flat, y)
    xc, yc = flat[kept], y[kept]
    xp, yp = p.x[len(y):].reshape(p.params["n_poison"], -1).double(), p.y[len(y):]
    eps, rho = p.params["n_poison"] / int(kept.sum()), p.params["norm_bound"]
    theta = torch.zeros(10, flat.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.05)

    def objective() -> torch.Tensor:
        w, b = theta[:, :-1], theta[:, -1]
        ce = torch.nn.functional.cross_entropy
        return ce(xc @ w.T + b, yc) + eps * ce(xp @ w.T + b, yp)

    for _ in range(300):  # projected Adam on the norm ball
        opt.zero_grad()
        objective().backward()
        opt.step()
        with torch.no_grad():
            theta.mul_(min(1.0, rho / float(theta.norm())))
    achieved = float(objective().detach())
    assert achieved <= p.params["upper_bound"] + 1e-6, (achieved, p.params["upper_bound"])
    # and U* is an upper bound at every theta of the ball: the game's bound at the minimiser exceeds its value
    w, b = theta.detach()[:, :-1], theta.detach()[:, -1]
    game = Game(xc.float(), yc, defense, ("sphere", "slab"), eps)
    assert game.value_bound(w, b)[0] >= achieved - 1e-6


def test_attack_beats_as_many_label_noise_rows(digits, digits_poisons):
    """Retrained on sanitised data, the victim loses more to the poisons than to random label noise."""
    x, y, x_test, y_test = digits
    p = digits_poisons
    kept = sanitize(p.x, p.y, reference=(x, y)).keep
    poisoned_acc = _victim_accuracy(p.x[kept], p.y[kept], x_test, y_test)
    g = torch.Generator().manual_seed(1)
    n = p.params["n_poison"]
    rows = torch.randint(0, len(y), (n,), generator=g)
    noisy_y = (y[rows] + torch.randint(1, 10, (n,), generator=g)) % 10
    xn, yn = torch.cat([x, x[rows]]), torch.cat([y, noisy_y])
    kept_noise = sanitize(xn, yn, reference=(x, y)).keep
    noise_acc = _victim_accuracy(xn[kept_noise], yn[kept_noise], x_test, y_test)
    assert poisoned_acc < noise_acc - 0.01, (poisoned_acc, noise_acc)


def test_bad_input_is_one_line_advkit_error(digits):
    x, y, _, _ = digits
    for rate in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(AdvkitError, match="rate"):
            Steinhardt(rate=rate)
    for kwargs in ({"methods": ("cube",)}, {"remove": 1.0}, {"iterations": 0}, {"eta": 0.0}, {"burn_in": 10, "iterations": 10}):
        with pytest.raises(AdvkitError):
            Steinhardt(**kwargs)
    attack = Steinhardt(iterations=2)
    with pytest.raises(AdvkitError, match="rate"):
        Steinhardt(rate=1e-5, iterations=2)(x, y)
    with pytest.raises(AdvkitError):
        attack(x[:, 0], y)
    with pytest.raises(AdvkitError, match="bounds"):
        attack(x * 3, y)
    with pytest.raises(AdvkitError):
        attack(x, y[:-1])
    with pytest.raises(AdvkitError, match="two classes"):
        attack(x[y == 0], y[y == 0])
    with pytest.raises(AdvkitError, match="labels"):
        attack(x, y, num_classes=5)
    with pytest.raises(AdvkitError, match="unknown method"):
        sanitize(x, y, ("sphere", "cube"))
    for remove in (1.0, -0.1):
        with pytest.raises(AdvkitError, match="remove"):
            sanitize(x, y, remove=remove)
    with pytest.raises(AdvkitError, match="no reference rows"):
        sanitize(x, y, reference=(x[y != 4], y[y != 4]))
    with pytest.raises(AdvkitError):
        sanitize(x, y.float())
    with pytest.raises(AdvkitError):
        sanitize(x, y, reference=(x[:, :, :4], y))


@pytest.mark.slow
def test_mnist5k_three_percent_poisons_against_sphere_and_slab():
    """Acceptance: 3% Steinhardt poisons, mnist5k (10 classes), logreg retrained on sanitised data."""
    torch.set_num_threads(1)
    train, test = load_dataset("mnist5k", split="train"), load_dataset("mnist5k", split="test")
    x, y, xt, yt = train.x, train.y, test.x, test.y
    seeds = (0, 1, 2)
    clean_acc = _victim_accuracy(x, y, xt, yt, seeds, lr=2e-3)
    kept_clean = sanitize(x, y, reference=(x, y)).keep
    defended_acc = _victim_accuracy(x[kept_clean], y[kept_clean], xt, yt, seeds, lr=2e-3)
    started = time.perf_counter()
    p = Steinhardt(rate=0.03)(x, y, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - started
    kept = sanitize(p.x, p.y, reference=(x, y)).keep
    assert bool(kept[len(y):].all()), "the oracle sanitiser keeps every poison"
    poisoned_acc = _victim_accuracy(p.x[kept], p.y[kept], xt, yt, seeds, lr=2e-3)
    print(
        f"mnist5k logreg: clean {clean_acc:.4f}, sphere+slab on clean {defended_acc:.4f}, "
        f"3% poisons + sphere+slab {poisoned_acc:.4f}; crafted in {seconds:.1f}s; U* {p.params['upper_bound']:.3f}"
    )
    assert defended_acc - poisoned_acc >= 0.015
    assert seconds < 240
