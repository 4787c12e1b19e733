"""One-pixel (few-pixel) attack by differential evolution.

Su, Vargas & Sakurai, "One Pixel Attack for Fooling Deep Neural Networks", IEEE TEVC
2019. A candidate is ``pixels`` tuples (row, column, one value per channel); the
population evolves by DE/rand/1 (``mutant = a + F (b - c)``, F = 0.5, no crossover) and a
child replaces its parent when it lowers the true class's probability (untargeted) or
raises the target's (targeted). Stops per image once the goal is reached. Written as a
batched DE in torch: every image's whole population is scored in one model call per
generation (scipy's optimiser evaluates one image at a time). The L0 budget is the
threat's ``eps`` (a number of pixels); each generation costs ``population`` queries per
image, the initial population one more round. A row stops once it succeeds or its
budget in the view cannot pay for another generation; the view counts the queries.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.row_random import RowRandom
from advkit.attacks.evasion.base import Clean, EvasionAttack
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register


@register(
    "onepixel",
    family="evasion",
    knowledge="score",
    paper="Su, Vargas, Sakurai. One Pixel Attack for Fooling Deep Neural Networks. IEEE TEVC 2019",
    atlas="AML.T0043.001",
    summary="differential evolution over a few (row, col, value) pixels, batched over images and population",
)
class OnePixel(EvasionAttack):
    """Few-pixel attack (L0 budget = ``threat.eps`` pixels) by batched differential evolution."""

    name = "onepixel"
    knowledge = "score"
    norms = ("l0",)
    goals = ("untargeted", "targeted")

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        max_queries: int = 5000,
        population: int = 100,
        mutation: float = 0.5,
        batch_size: int = 100,
    ) -> None:
        super().__init__(threat or Threat(norm="l0", eps=1), batch_size=batch_size)
        if max_queries < population:
            raise AdvkitError(f"--max-queries must cover one population of {population}; got {max_queries}")
        if population < 4:
            raise AdvkitError(f"population must be >= 4 (DE/rand/1 needs three others); got {population}")
        if int(self.threat.eps) != self.threat.eps or self.threat.eps < 1:
            raise AdvkitError(f"onepixel takes a whole number of pixels as eps (L0); got {self.threat.eps}")
        self.max_queries, self.population, self.mutation = max_queries, population, mutation

    def params(self) -> dict[str, Any]:
        return {"max_queries": self.max_queries, "population": self.population, "mutation": self.mutation, "pixels": int(self.threat.eps)}

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: Clean,
    ) -> Tensor:
        assert threat.bounds is not None
        lo, hi = threat.bounds
        n, c, h, w = x.shape
        k = int(threat.eps)
        if k == 0:  # nothing may change (the eps=0 reliability check)
            return x
        if k > h * w:
            raise AdvkitError(f"onepixel: {k} pixels exceed the image's {h * w}")
        pop, genes = self.population, k * (2 + c)
        scale = torch.tensor([h - 1e-6, w - 1e-6, *([hi - lo] * c)] * k)
        offset = torch.tensor([0.0, 0.0, *([lo] * c)] * k)
        population = (random.uniform("population", (pop, genes)) * scale + offset).to(x)
        scale, offset = scale.to(x), offset.to(x)
        best_x = x.clone()
        everyone = torch.arange(n, device=x.device)
        if bool((model.budget_left(everyone) < pop).any()):
            raise AdvkitError(f"onepixel: a row's query budget cannot pay for one population of {pop}")
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        fitness, success, images = self._score(model, x, y, target, population, k, c, everyone)
        rows_done = success.any(1)
        self._record(best_x, images, fitness, success, rows_done, done)
        generations = self.max_queries // pop - 1
        for generation in range(generations):
            active = (~done).nonzero().squeeze(1)
            active = active[model.budget_left(active) >= pop] if active.numel() else active
            if active.numel() == 0:
                break
            parents = population[active]
            # three distinct members other than the parent itself, per population slot
            picks = random.uniform(("picks", generation), (pop, pop - 1), shared=True).argsort(1)[:, :3].cpu()
            picks = (picks + (picks >= torch.arange(pop).unsqueeze(1)).long()).to(x.device)
            a, b, cc = parents[:, picks[:, 0]], parents[:, picks[:, 1]], parents[:, picks[:, 2]]
            children = torch.minimum(torch.maximum(a + self.mutation * (b - cc), offset), offset + scale)
            child_fit, child_success, child_images = self._score(
                model, x[active], y[active], None if target is None else target[active], children, k, c, active
            )
            better = child_fit < fitness[active]
            population[active] = torch.where(better.unsqueeze(2), children, parents)
            fitness[active] = torch.where(better, child_fit, fitness[active])
            reached = child_success.any(1)
            sub_best = best_x[active]
            sub_done = done[active]
            self._record(sub_best, child_images, child_fit, child_success, reached, sub_done)
            best_x[active] = sub_best
            done[active] = sub_done
        leftover = (~done).nonzero().squeeze(1)  # no success: answer with the fittest candidate
        if leftover.numel():
            images = self._images(x[leftover], population[leftover], k, c)
            best_x[leftover] = images[torch.arange(leftover.numel()), fitness[leftover].argmin(1)]
        return best_x

    @staticmethod
    def _images(x: Tensor, candidates: Tensor, k: int, c: int) -> Tensor:
        """Stamp each candidate's pixels on its image: [n, pop, C, H, W]."""
        n, pop, _ = candidates.shape
        images = x.unsqueeze(1).expand(n, pop, *x.shape[1:]).clone()
        genes = candidates.view(n, pop, k, 2 + c)
        rows, cols = genes[..., 0].long(), genes[..., 1].long()
        values = genes[..., 2:]  # [n, pop, k, c]
        flat = images.view(n, pop, c, -1)
        index = (rows * x.shape[3] + cols).unsqueeze(2).expand(n, pop, c, k)
        flat.scatter_(3, index, values.permute(0, 1, 3, 2))
        return images

    def _score(
        self, model: ModelView, x: Tensor, y: Tensor, target: Tensor | None, candidates: Tensor, k: int, c: int, rows: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Fitness (lower is better), goal reached, and the stamped images of every candidate
        (``rows``: the batch row of each image, for the view's per-row count)."""
        n, pop, _ = candidates.shape
        images = self._images(x, candidates, k, c)
        probs = model.probs(images.flatten(0, 1), rows=rows.repeat_interleave(pop)).view(n, pop, -1)
        if target is not None:
            fitness = -probs.gather(2, target.view(n, 1, 1).expand(n, pop, 1)).squeeze(2)
            success = probs.argmax(2) == target.view(n, 1)
        else:
            fitness = probs.gather(2, y.view(n, 1, 1).expand(n, pop, 1)).squeeze(2)
            success = probs.argmax(2) != y.view(n, 1)
        return fitness, success, images

    @staticmethod
    def _record(best_x: Tensor, images: Tensor, fitness: Tensor, success: Tensor, reached: Tensor, done: Tensor) -> None:
        """For rows that reached the goal: keep the successful candidate with the best fitness."""
        rows = reached.nonzero().squeeze(1)
        if rows.numel() == 0:
            return
        masked = torch.where(success[rows], fitness[rows], torch.full_like(fitness[rows], float("inf")))
        best_x[rows] = images[rows, masked.argmin(1)]
        done[rows] = True
