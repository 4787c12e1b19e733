"""What the evasion base class verifies with: the projection, the goal test, the query log.

``project`` brings a candidate into the threat's ball and bounds; ``goal_reached`` says
whether logits reach the threat's goal; :class:`QueryLog` watches a black-box attack's
view so the base class can tell whether a returned candidate was really queried and,
per row, which queried point is the best fallback (DESIGN.md principle 3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from advkit.core import Threat
from advkit.metrics import perturbation_norms


def project(x_adv: Tensor, x: Tensor, threat: Threat) -> Tensor:
    """Bring ``x_adv`` into the threat's ball around ``x`` and into its bounds."""
    assert threat.bounds is not None
    lo, hi = threat.bounds
    delta = x_adv - x
    if threat.norm == "linf":
        delta = delta.clamp(-threat.eps, threat.eps)
    elif threat.norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (threat.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
    elif threat.norm == "l0":
        k = int(threat.eps)
        pixel_change = delta.abs().amax(1).flatten(1)  # [N, H*W]
        if k < pixel_change.shape[1]:
            keep = torch.zeros_like(pixel_change, dtype=torch.bool)
            if k > 0:
                keep.scatter_(1, pixel_change.topk(k, dim=1).indices, True)
            delta = delta * keep.view(delta.shape[0], 1, *delta.shape[2:])
    return (x + delta).clamp(lo, hi)


def goal_reached(logits: Tensor, y: Tensor, target: Tensor | None, threat: Threat) -> Tensor:
    """Per row: did these logits reach the threat's goal?"""
    if threat.goal == "targeted":
        assert target is not None
        return logits.argmax(1) == target
    if threat.goal == "confidence":
        return torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1) < threat.confidence
    return logits.argmax(1) != y


_HASH_PRIME = 2**61 - 1


class QueryLog:
    """Every point a black-box attack queried on one batch, as its view reports them.

    The base class's observer on the attack's view (the attack never sees it). It keeps an
    exact fingerprint of each queried point per original row (an integer hash of the float
    bits, so "was this candidate queried?" has a definite answer) and, per row, the
    goal-reaching point inside the threat with the smallest perturbation (``best``), the
    fallback for a row whose own answer cannot be used.
    """

    def __init__(self, x: Tensor, y: Tensor, target: Tensor | None, threat: Threat) -> None:
        self.x, self.y, self.target, self.threat = x, y, target, threat
        gen = torch.Generator().manual_seed(0x5EED)
        self._key = torch.randint(1, 4096, (x[0].numel(),), generator=gen, dtype=torch.long).to(x.device)
        self._offsets: dict[tuple[int, int], int] = {}
        self._rows: list[Tensor] = []
        self._prints: list[Tensor] = []
        self.best = x.clone()
        self.best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)

    def fingerprint(self, points: Tensor) -> Tensor:
        """An exact per-point hash of the float32 bits: equal points, equal hashes."""
        flat = points.detach() if points.requires_grad else points
        if flat.device != self.x.device or flat.dtype != torch.float32:
            flat = flat.to(self.x.device, torch.float32)
        flat = flat.reshape(points.shape[0], -1)  # a view when it can be
        if not flat.is_contiguous():
            flat = flat.contiguous()
        cols = flat.shape[1]
        if flat.shape[0] * cols <= 2**22 and cols <= 2**18:  # one chunk, one column block
            return self._column_hash(flat.view(torch.int32), 0).remainder_(_HASH_PRIME)
        out = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        rows_per_chunk = max(1, 2**22 // max(cols, 1))
        for first in range(0, flat.shape[0], rows_per_chunk):
            bits = flat[first : first + rows_per_chunk].view(torch.int32)
            acc = torch.zeros(bits.shape[0], dtype=torch.long, device=flat.device)
            for col in range(0, cols, 2**18):  # 2^18 terms of < 2^44 each stay below 2^62
                part = self._column_hash(bits[:, col : col + 2**18], col)
                acc = (acc + part % _HASH_PRIME) % _HASH_PRIME
            out[first : first + rows_per_chunk] = acc
        return out

    def _column_hash(self, bits: Tensor, col: int) -> Tensor:
        """``sum_j (bits_j + 2^31) * key_{col + j}`` per row, exactly (int32 ``bits``, int64 out).

        The offset's share, ``2^31 * sum_j key_j``, is added once: every partial sum of the
        signed products stays below 2^61 in size, so the integer result is the same.
        """
        width = bits.shape[1]
        key = self._key[col : col + width]
        offset = self._offsets.get((col, width))
        if offset is None:
            offset = self._offsets[(col, width)] = int(key.sum()) * 2**31
        return torch.mul(bits, key).sum(1).add_(offset)  # int32 * int64 promotes to int64 exactly

    def inside(self, points: Tensor, x: Tensor) -> Tensor:
        """Per point: does the threat's projection leave it where it is (up to float noise)?"""
        assert self.threat.bounds is not None
        lo, hi = self.threat.bounds
        return (project(points, x, self.threat) - points).abs().flatten(1).amax(1) <= 1e-6 * (hi - lo)

    def __call__(self, points: Tensor, logits: Tensor, rows: Tensor) -> None:
        # a copy of the rows: an attack changing its index tensor later cannot move its queries
        rows = rows.to(self.x.device, copy=True)
        self._rows.append(rows)
        self._prints.append(self.fingerprint(points))
        target = None if self.target is None else self.target[rows]
        if logits.device != self.x.device:
            logits = logits.to(self.x.device)
        reached = goal_reached(logits, self.y[rows], target, self.threat)
        if not bool(reached.any()):
            return
        idx = reached.nonzero().squeeze(1)
        p, r = points[idx].to(self.x.device, self.x.dtype), rows[idx]
        origin = self.x[r]
        norms = perturbation_norms(p - origin, self.threat.norm).float()
        norms = torch.where(self.inside(p, origin) & torch.isfinite(p).flatten(1).all(1), norms, torch.full_like(norms, float("inf")))
        lowest = torch.full_like(self.best_norm, float("inf")).scatter_reduce(0, r, norms, "amin")
        improves = lowest < self.best_norm
        pick = improves[r] & (norms == lowest[r])
        # one point per row (duplicate indices in an assignment could mix several points)
        first = torch.full((self.x.shape[0],), r.numel(), dtype=torch.long, device=r.device)
        first = first.scatter_reduce(0, r[pick], pick.nonzero().squeeze(1), "amin")
        rows_won = improves.nonzero().squeeze(1)
        self.best[rows_won] = p[first[rows_won]]
        self.best_norm = torch.where(improves, lowest, self.best_norm)

    def queried(self, points: Tensor) -> Tensor:
        """Per row ``i``: was ``points[i]`` itself queried for row ``i``?"""
        out = torch.zeros(points.shape[0], dtype=torch.bool, device=self.x.device)
        if not self._rows:
            return out
        rows, prints = torch.cat(self._rows), torch.cat(self._prints)
        wanted = self.fingerprint(points)
        out[rows[prints == wanted[rows]]] = True
        return out

    @property
    def has_best(self) -> Tensor:
        return torch.isfinite(self.best_norm)
