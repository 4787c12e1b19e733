"""Randomized smoothing: PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (ICML 2019).

The smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c). CERTIFY draws
``n0`` noisy copies to pick the top class, ``n`` more to estimate its probability, takes
the one-sided Clopper-Pearson lower bound pA at level ``alpha`` and certifies the L2
radius ``sigma * Phi^-1(pA)``, abstaining (-1) when pA < 1/2. PREDICT abstains when a
two-sided binomial test cannot tell the top two classes apart at level ``alpha``.
Noise is streamed in chunks of ``batch_size`` rows, so memory depends on the batch, not
on ``n``. As in the paper, noisy inputs are not clipped to the pixel bounds. ACR is the
mean certified radius with abstentions and wrong predictions counted as 0 (Zhai et al.,
MACER, ICLR 2020).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import beta, binomtest, norm
from torch import Tensor

from advkit.core import ModelHandle, check_images, check_labels
from advkit.engine import Executor
from advkit.errors import AdvkitError
from advkit.registry import register

ABSTAIN = -1


def _check_settings(sigma: float, alpha: float, n: int, n0: int | None = None) -> None:
    if not (sigma > 0 and math.isfinite(sigma)):
        raise AdvkitError(f"sigma must be a number > 0; got {sigma}")
    if not 0.0 < alpha < 1.0:
        raise AdvkitError(f"alpha must be in (0, 1); got {alpha}")
    if n < 1:
        raise AdvkitError(f"n must be >= 1; got {n}")
    if n0 is not None and not 1 <= n0 <= n:
        raise AdvkitError(f"n0 must be in 1..n (n={n}); got {n0}")


def lower_confidence_bound(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion."""
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


@dataclass
class CertResult:
    """Per row: smoothed prediction (-1 = abstain), certified L2 radius, label."""

    prediction: Tensor
    radius: Tensor
    y: Tensor
    sigma: float
    n: int
    n0: int
    alpha: float
    seconds: float

    @property
    def correct(self) -> Tensor:
        return self.prediction == self.y  # an abstention (-1) never equals a label

    def certified_accuracy(self, radius: float) -> float:
        """Share of rows predicted correctly with a certified radius >= ``radius``."""
        return float((self.correct & (self.radius >= radius)).float().mean()) if self.y.numel() else 0.0

    @property
    def acr(self) -> float:
        return float((self.radius * self.correct).mean()) if self.y.numel() else 0.0

    @property
    def abstain_rate(self) -> float:
        return float((self.prediction == ABSTAIN).float().mean()) if self.y.numel() else 0.0

    def to_dict(self, radii: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> dict[str, Any]:
        return {
            "sigma": self.sigma,
            "n": self.n,
            "n0": self.n0,
            "alpha": self.alpha,
            "certified_accuracy": {f"{r:g}": self.certified_accuracy(r) for r in radii},
            "acr": self.acr,
            "abstain_rate": self.abstain_rate,
            "seconds": self.seconds,
        }


@register(
    "randomized-smoothing",
    family="certify",
    knowledge="white",
    paper="Cohen, Rosenfeld & Kolter, Certified Adversarial Robustness via Randomized Smoothing, ICML 2019",
    atlas="AML.M0003",
    summary="PREDICT and CERTIFY an L2 radius of a base classifier smoothed with Gaussian noise",
)
class Smoothed:
    """A base classifier smoothed with Gaussian noise of standard deviation ``sigma``."""

    def __init__(self, model: ModelHandle, sigma: float, batch_size: int = 1000) -> None:
        _check_settings(sigma, 0.5, 1)
        if batch_size < 1:
            raise AdvkitError(f"batch size must be >= 1; got {batch_size}")
        self.model = model
        self.sigma = float(sigma)
        self.batch_size = batch_size

    def counts(self, x: Tensor, num: int, generator: torch.Generator) -> Tensor:
        """Class counts of the base classifier on ``num`` noisy copies of one image."""
        counts = torch.zeros(self.model.num_classes, dtype=torch.long)
        remaining = num
        with torch.inference_mode(), self.model.eval_mode():
            # one noise buffer per call, refilled in place: memory stays at one batch
            buffer = torch.empty((min(self.batch_size, num), *x.shape))
            while remaining > 0:
                size = min(self.batch_size, remaining)
                noisy = buffer[:size].normal_(generator=generator).mul_(self.sigma).add_(x.to(buffer.device))
                predictions = self.model.network(self.model.to_device(noisy)).argmax(1).cpu()
                counts += torch.bincount(predictions, minlength=self.model.num_classes)
                remaining -= size
        return counts

    def predict(self, x: Tensor, n: int, alpha: float, generator: torch.Generator) -> int:
        """PREDICT: the top class, or -1 when the binomial test cannot separate the top two."""
        _check_settings(self.sigma, alpha, n)
        counts = self.counts(x, n, generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, generator: torch.Generator) -> tuple[int, float]:
        """CERTIFY: (class, L2 radius) or (-1, 0.0) when the lower bound pA < 1/2."""
        _check_settings(self.sigma, alpha, n, n0)
        guess = int(self.counts(x, n0, generator).argmax())
        p_a = lower_confidence_bound(int(self.counts(x, n, generator)[guess]), n, alpha)
        if p_a < 0.5:
            return ABSTAIN, 0.0
        return guess, self.sigma * float(norm.ppf(p_a))

    def certify_dataset(
        self,
        x: Tensor,
        y: Tensor,
        n0: int,
        n: int,
        alpha: float,
        generator: torch.Generator | None = None,
        progress: Any = None,
        executor: Executor | None = None,
        first_row: int = 0,
    ) -> CertResult:
        """CERTIFY every row; returns predictions, radii and the metrics.

        Row ``i`` draws its noise from its own generator, seeded from one draw of
        ``generator`` and its id ``first_row + i`` (:func:`advkit.engine.shard_seed`), so
        the numbers do not depend on how the rows are split over an ``executor``'s workers,
        nor (``first_row``: where a chunk starts) on how streamed rows are chunked.
        """
        from advkit.engine import shard_seed
        from advkit.engine.local import LocalExecutor
        from advkit.models.portable import share_model

        _check_settings(self.sigma, alpha, n, n0)
        x = check_images(x, self.model.info, "images")
        y = check_labels(y, x.shape[0], self.model.num_classes)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        base = shard_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        executor = executor if executor is not None else LocalExecutor()
        rows = x.shape[0]
        size = max(1, rows if not executor.remote else -(-rows // (4 * executor.workers)))
        shards = [(start, min(rows, start + size)) for start in range(0, rows, size)]
        settings = {"sigma": self.sigma, "batch_size": self.batch_size, "n0": n0, "n": n, "alpha": alpha, "base": base, "first_row": first_row}
        start = time.perf_counter()
        parts = executor.map(
            _certify_rows, shards, share_model(executor, self.model), executor.put(x.cpu()), settings, None if executor.remote else progress, label="certify rows"
        )
        predictions = torch.cat([p for p, _ in parts]) if parts else torch.empty(0, dtype=torch.long)
        radii = torch.cat([r for _, r in parts]) if parts else torch.empty(0)
        if executor.remote and progress is not None:
            progress("certify", rows, rows)
        return CertResult(predictions, radii, y.cpu(), self.sigma, n, n0, alpha, time.perf_counter() - start)


def join_results(parts: list[CertResult]) -> CertResult:
    """One result of consecutive chunks of rows certified with the same settings (streamed data)."""
    if not parts:
        raise AdvkitError("internal: no certified chunks to join")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    return CertResult(
        torch.cat([p.prediction for p in parts]), torch.cat([p.radius for p in parts]), torch.cat([p.y for p in parts]),
        first.sigma, first.n, first.n0, first.alpha, sum(p.seconds for p in parts),
    )


def _certify_rows(shard: tuple[int, int], model: Any, x: Tensor, settings: dict[str, Any], progress: Any) -> tuple[Tensor, Tensor]:
    """One executor task of :meth:`Smoothed.certify_dataset`: CERTIFY rows ``shard[0]:shard[1]``."""
    from advkit.engine import shard_seed

    smoothed = Smoothed(model.unpack(), settings["sigma"], settings["batch_size"])
    return certify_rows(smoothed, x, shard, settings["n0"], settings["n"], settings["alpha"], lambda i: shard_seed(settings["base"], settings.get("first_row", 0) + i), progress)


def certify_rows(
    smoothed: Smoothed, x: Tensor, shard: tuple[int, int], n0: int, n: int, alpha: float, row_seed: Callable[[int], int], progress: Any = None
) -> tuple[Tensor, Tensor]:
    """CERTIFY rows ``shard[0]:shard[1]`` of ``x``; row ``i`` draws its noise from ``row_seed(i)``."""
    first, last = shard
    predictions = torch.empty(last - first, dtype=torch.long)
    radii = torch.empty(last - first)
    for k, i in enumerate(range(first, last)):
        row_generator = torch.Generator().manual_seed(row_seed(i))
        predictions[k], radii[k] = smoothed.certify(x[i], n0, n, alpha, row_generator)
        if progress is not None:
            progress("certify", i + 1, x.shape[0])
    return predictions, radii
