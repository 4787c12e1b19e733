"""FAB: the Fast Adaptive Boundary attack, targeted (FAB-T) and untargeted, Linf and L2.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020; FAB-T as used in AutoAttack (Croce & Hein, ICML 2020): one run per
target class, the top 9 other classes by clean logits, 100 iterations, 1 restart,
``alpha_max = 0.1``, ``eta = 1.05``, ``beta = 0.9``.

Each iteration linearises the decision boundary at the current point ``x_k``: the
hyperplane ``f(x_k) + grad f(x_k) . (z - x_k) = 0`` of ``f = z_t - z_y`` (targeted) or of
the class ``k != y`` whose linearised boundary is closest, ``|f_k| / ||grad f_k||_q``
with ``q`` the dual norm (untargeted). It projects both ``x_k`` and the original ``x_0``
onto that hyperplane intersected with the box of valid inputs (minimal Linf or L2
displacement; when the box cannot reach the hyperplane, the farthest move towards it),
and steps to the convex combination ``(1 - alpha)(x_k + eta d_k) + alpha (x_0 + eta d_0)``
with ``alpha = min(||d_k|| / (||d_k|| + ||d_0||), alpha_max)``, which biases the iterate
towards the original point. Once an iterate is adversarial it is kept if it is the
closest so far, and the iterate moves back towards ``x_0``: ``x_0 + beta (x_k - x_0)``.

advkit's choices and simplifications:

- FAB minimises the norm; an evaluation at budget eps needs only a point inside the
  ball, so a row retires once it has an adversarial point within eps. Rows whose best
  point lies outside the ball keep searching (and the base class's projection makes them
  fail unless the clipped point still fools the model).
- The adversarial test of step k is read from the logits of the gradient pass at step
  k + 1 (no separate forward pass); only rows that moved back pay a second pass.
- The first gradient of a run from the clean point reuses the base class's
  differentiable clean forward when most rows of the batch are still standing.
- The box projection is solved per row by sorting the breakpoints of the piecewise-
  linear progress function (exact for Linf and L2); the untargeted variant takes one
  backward pass per class. No L1 variant.
- Under ``goal="targeted"`` (an extension) the hyperplane is the given target against its
  strongest other class at the current point (the true class at the start, as in FAB-T),
  and a row succeeds when its target wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from advkit.attacks.evasion.apgd_losses import TARGET_CLASSES, misclassified, on_target, top_other_classes
from advkit.attacks.evasion.row_random import RowRandom, Tag
from advkit.attacks.evasion.steps import draw_normal, draw_uniform
from advkit.attacks.evasion.base import CleanForward, EvasionAttack, goal_reached
from advkit.core import ModelView, Threat
from advkit.errors import AdvkitError
from advkit.registry import register

Linearised = tuple[Tensor, Tensor, Tensor]  # logits [n, C], f [n], grad f [n, D]


def box_hyperplane_projection(t: Tensor, w: Tensor, b: Tensor, norm: str, bounds: tuple[float, float]) -> Tensor:
    """Per row, the smallest ``d`` (Linf or L2) with ``w . (t + d) = b`` and ``t + d`` in the bounds.

    ``t``, ``w``: ``[n, D]``; ``b``: ``[n]``. Where the box cannot reach the hyperplane,
    ``d`` moves every coordinate as far as the box allows towards it. Each coordinate moves
    by ``min(tau, r_i)`` (Linf) or ``|w_i| min(tau, r_i)`` (L2) in the helpful direction;
    the progress ``sum_i v_i min(tau, r_i)`` is piecewise linear in ``tau``, so sorting
    the breakpoints ``r_i`` gives ``tau`` exactly.
    """
    lo, hi = bounds
    gap = b - (w * t).sum(1)
    flip = torch.where(gap >= 0, 1.0, -1.0).unsqueeze(1)
    ws = w * flip  # now the move must increase ws . d by |gap|
    need = gap.abs()
    room = torch.where(ws > 0, hi - t, t - lo).clamp_min(0.0)
    weight = ws.abs()
    live = weight > 1e-12
    big = torch.tensor(float(hi - lo) * 4.0 + 1.0, device=t.device, dtype=t.dtype)
    if norm == "linf":
        v, r = weight, room
    else:
        v, r = weight * weight, room / weight.clamp_min(1e-12)
    v = torch.where(live, v, torch.zeros_like(v))
    r = torch.where(live, r, big.expand_as(r))
    if norm != "linf":
        r = r.clamp(max=float(big) * 1e6)
    r_sorted, order = r.sort(dim=1)
    v_sorted = v.gather(1, order)
    prefix = (v_sorted * r_sorted).cumsum(1)  # sum_{j <= k} v_j r_j
    suffix = v_sorted.flip(1).cumsum(1).flip(1)  # sum_{j >= k} v_j
    after = torch.cat((suffix[:, 1:], torch.zeros_like(suffix[:, :1])), 1)  # sum_{j > k} v_j (exact 0 at the end)
    progress = prefix + r_sorted * after  # progress at tau = r_k
    k = (progress < need.unsqueeze(1)).sum(1)
    feasible = k < r.shape[1]
    kc = k.clamp(max=r.shape[1] - 1).unsqueeze(1)
    before = torch.where(k > 0, prefix.gather(1, (kc - 1).clamp_min(0)).squeeze(1), torch.zeros_like(need))
    slope = suffix.gather(1, kc).squeeze(1).clamp_min(1e-30)
    tau = torch.where(feasible, (need - before) / slope, torch.full_like(need, float("inf")))
    amount = torch.minimum(tau.unsqueeze(1), r)
    if norm != "linf":
        amount = amount * weight
    amount = torch.where(live, amount, torch.zeros_like(amount))
    return torch.sign(ws) * amount


def _norms(delta: Tensor, norm: str) -> Tensor:
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def fab_start(x: Tensor, eps: float, norm: str, bounds: tuple[float, float], random: RowRandom, tag: Tag = "start") -> Tensor:
    """The reference's random start for restarts after the first: half of eps in a random direction."""
    t = draw_uniform(random, x, tag) * 2 - 1 if norm == "linf" else draw_normal(random, x, tag)
    t = t / _norms(t, norm).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
    return (x + 0.5 * eps * t).clamp(*bounds)


def _boundary(
    logits: Tensor, y: Tensor, target: Tensor | None, grads: Callable[[Tensor], Tensor], norm: str, rival: bool = False
) -> tuple[Tensor, Tensor]:
    """(f, grad f) of the hyperplane to project on: the target's, or the closest class's.

    With ``rival`` (the targeted goal) the target is played against its strongest other
    class at this point instead of the true class, so crossing the plane makes it win.
    """
    rows = torch.arange(logits.shape[0], device=logits.device)
    if target is not None:
        if rival:
            y = logits.detach().scatter(1, target[:, None], float("-inf")).argmax(1)
        f = logits[rows, target] - logits[rows, y]
        return f.detach(), grads(f.sum())
    per_class = torch.stack([grads(logits[:, c].sum()) for c in range(logits.shape[1])], 1)  # [n, C, D]
    f_all = (logits - logits[rows, y].unsqueeze(1)).detach()
    g_all = per_class - per_class[rows, y].unsqueeze(1)
    dual = g_all.abs().sum(2) if norm == "linf" else g_all.norm(dim=2)
    distance = f_all.abs() / (dual + 1e-12)
    distance[rows, y] = float("inf")
    closest = distance.argmin(1)
    return f_all[rows, closest], g_all[rows, closest]


def linearise(
    forward: Callable[[Tensor], Tensor], x_in: Tensor, y: Tensor, target: Tensor | None, norm: str, need_grad: bool = True, rival: bool = False
) -> Linearised:
    """Logits at ``x_in`` and the boundary's value and input gradient (flattened)."""
    if not need_grad:
        with torch.no_grad():
            logits = forward(x_in)
        n = x_in.shape[0]  # only the logits are needed (the last check)
        return logits, torch.zeros(n, device=x_in.device), torch.zeros(n, 0, device=x_in.device)
    x_in = x_in.detach().requires_grad_(True)
    logits = forward(x_in)

    def grads(scalar: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(scalar, x_in, retain_graph=target is None)
        return g.flatten(1)

    f, g = _boundary(logits, y, target, grads, norm, rival)
    return logits.detach(), f, g


def fab(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str,
    bounds: tuple[float, float],
    steps: int,
    success: Callable[[Tensor, Tensor, Tensor | None], Tensor],
    start: Tensor,
    target: Tensor | None = None,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    first: Linearised | None = None,
    rival: bool = False,
) -> tuple[Tensor, Tensor]:
    """One FAB run from ``start``; per row, the closest adversarial point found and its norm (inf if none).

    A row retires once it has an adversarial point within ``eps``. ``first`` is an already
    computed linearisation at ``start`` (the clean forward pass reused).

    After each step the new point is checked for the goal; adversarial rows move back
    towards ``x`` and need their gradient at the moved point. Two pass orders give the
    same iterates: with few such rows, one gradient pass for all rows (its logits are
    the check) plus one for the moved rows; with many, a forward-only check and then one
    gradient pass for all (the reference's order). The count of the last step decides.
    """
    n = x.shape[0]
    shape = x.shape[1:]
    best_adv = x.clone()
    best_norm = torch.full((n,), float("inf"), device=x.device)
    st: dict[str, Any] = {"idx": torch.arange(n, device=x.device), "x0": x.flatten(1), "x1": start.flatten(1), "y": y, "t": target}

    def lin_rows(rows: Tensor | None, need_grad: bool) -> Linearised:
        pts, ys, ts = st["x1"], st["y"], st["t"]
        if rows is not None:
            pts, ys, ts = pts[rows], ys[rows], (ts[rows] if ts is not None else None)
        return linearise(forward, pts.view(-1, *shape), ys, ts, norm, need_grad, rival)

    def absorb(logits: Tensor) -> tuple[Tensor, Tensor]:
        """Record goal-reaching rows, retire those within eps, move the others back; (kept, moved)."""
        adv = success(logits, st["y"], st["t"])
        if not bool(adv.any()):
            return torch.ones_like(adv), adv
        idx = st["idx"]
        dist = _norms(st["x1"] - st["x0"], norm)
        better = adv & (dist < best_norm[idx])
        best_adv[idx[better]] = st["x1"][better].view(-1, *shape)
        best_norm[idx[better]] = dist[better]
        keep = ~(adv & (best_norm[idx] <= eps))
        for key, v in st.items():
            if v is not None:
                st[key] = v[keep]
        moved = adv[keep]
        st["x1"] = torch.where(moved.unsqueeze(1), st["x0"] + beta * (st["x1"] - st["x0"]), st["x1"])
        return keep, moved

    lin = first if first is not None else lin_rows(None, True)
    keep, moved = absorb(lin[0])
    if not bool(keep.all()) or bool(moved.any()):  # a random start may already fool the model
        lin = lin_rows(None, True)
    pulled = 0
    for it in range(steps):
        if st["idx"].numel() == 0:
            break
        _, f, g = lin
        x0, x1 = st["x0"], st["x1"]
        b = (g * x1).sum(1) - f
        both = box_hyperplane_projection(torch.cat((x1, x0)), torch.cat((g, g)), torch.cat((b, b)), norm, bounds)
        m = x1.shape[0]
        d1, d0 = both[:m], both[m:]
        a1 = _norms(d1, norm).clamp_min(1e-8)
        a0 = _norms(d0, norm).clamp_min(1e-8)
        alpha = (a1 / (a1 + a0)).clamp(0.0, alpha_max).unsqueeze(1)
        st["x1"] = ((x1 + eta * d1) * (1 - alpha) + (x0 + eta * d0) * alpha).clamp(*bounds)
        last = it == steps - 1
        if last or 3 * pulled >= m:  # forward-only check, then one gradient pass for every row
            with torch.no_grad():
                logits = forward(st["x1"].view(-1, *shape))
            keep, moved = absorb(logits)
            if not last and st["idx"].numel():
                lin = lin_rows(None, True)
        else:  # one gradient pass for every row; the moved rows get a second one
            lin = lin_rows(None, True)
            keep, moved = absorb(lin[0])
            logits, f, g = (v[keep] for v in lin)
            if bool(moved.any()):
                rows = moved.nonzero().squeeze(1)
                _, f_new, g_new = lin_rows(rows, True)
                f, g = f.clone(), g.clone()
                f[rows], g[rows] = f_new, g_new
            lin = (logits, f, g)
        pulled = int(moved.sum())
    return best_adv, best_norm


@register(
    "fab",
    family="evasion",
    knowledge="white",
    paper="Croce & Hein. Minimally distorted adversarial examples with a fast adaptive boundary attack. ICML 2020",
    atlas="AML.T0043.000",
    summary="fast adaptive boundary attack (FAB-T by default: top-9 target classes), Linf/L2",
)
class FAB(EvasionAttack):
    """FAB; ``targeted=True`` (default) runs FAB-T over the top ``target_classes`` other classes."""

    name = "fab"
    goals = ("untargeted", "targeted")

    def __init__(
        self,
        threat: Threat | None = None,
        *,
        steps: int = 100,
        restarts: int = 1,
        targeted: bool = True,
        target_classes: int = TARGET_CLASSES,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        batch_size: int = 500,
    ) -> None:
        super().__init__(threat, batch_size=batch_size)
        if steps < 1:
            raise AdvkitError(f"{self.name}: steps must be >= 1; got {steps}")
        if restarts < 1:
            raise AdvkitError(f"{self.name}: restarts must be >= 1; got {restarts}")
        if target_classes < 1:
            raise AdvkitError(f"{self.name}: target_classes must be >= 1; got {target_classes}")
        if not 0.0 <= alpha_max <= 1.0 or eta <= 0 or not 0.0 < beta < 1.0:
            raise AdvkitError(f"{self.name}: need 0 <= alpha_max <= 1, eta > 0, 0 < beta < 1; got {alpha_max}, {eta}, {beta}")
        self.steps = steps
        self.restarts = restarts
        self.targeted = targeted
        self.target_classes = target_classes
        self.alpha_max = alpha_max
        self.eta = eta
        self.beta = beta

    def params(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "restarts": self.restarts,
            "targeted": self.targeted,
            "target_classes": self.target_classes if self.targeted else None,
            "alpha_max": self.alpha_max,
            "eta": self.eta,
            "beta": self.beta,
        }

    def run(
        self,
        model: ModelView,
        x: Tensor,
        y: Tensor,
        target: Tensor | None,
        threat: Threat,
        random: RowRandom,
        clean: CleanForward,
    ) -> tuple[Tensor, Tensor | None]:
        assert threat.bounds is not None
        out = x.clone()
        if threat.eps == 0:
            return out, None
        clean_logits = clean.logits.detach()
        done = goal_reached(clean_logits, y, target, threat) if self.keep_clean_successes else torch.zeros_like(y, dtype=torch.bool)
        best_norm = torch.full((x.shape[0],), float("inf"), device=x.device)
        targeted_goal = threat.goal == "targeted"
        success = on_target if targeted_goal else misclassified
        if threat.goal == "targeted":
            plan: list[Tensor | None] = [target]
        elif self.targeted:
            plan = top_other_classes(clean_logits, y, self.target_classes)
        else:
            plan = [None]
        for pass_index, tgt in enumerate(plan):
            for restart in range(self.restarts):
                rows = (~done).nonzero().squeeze(1)
                if rows.numel() == 0:
                    return out, None
                xr, yr = x[rows], y[rows]
                tr = tgt[rows] if tgt is not None else None
                first = None
                if restart == 0 and 3 * rows.numel() >= 2 * x.shape[0]:
                    first = self._clean_linearisation(clean, rows, yr, tr, threat.norm, targeted_goal)
                start = xr if restart == 0 else fab_start(xr, threat.eps, threat.norm, threat.bounds, random[rows], ("start", pass_index, restart))
                adv, norms = fab(
                    model.logits,
                    xr,
                    yr,
                    eps=threat.eps,
                    norm=threat.norm,
                    bounds=threat.bounds,
                    steps=self.steps,
                    success=success,
                    start=start,
                    target=tr,
                    alpha_max=self.alpha_max,
                    eta=self.eta,
                    beta=self.beta,
                    first=first,
                    rival=targeted_goal,
                )
                better = norms < best_norm[rows]
                out[rows[better]] = adv[better]
                best_norm[rows[better]] = norms[better]
                done[rows[norms <= threat.eps]] = True
        return out, None

    @staticmethod
    def _clean_linearisation(clean: CleanForward, rows: Tensor, y: Tensor, target: Tensor | None, norm: str, rival: bool) -> Linearised:
        """The first linearisation from the base class's differentiable clean pass (no new forward)."""
        logits = clean.logits[rows]

        def grads(scalar: Tensor) -> Tensor:
            (g,) = torch.autograd.grad(scalar, clean.x, retain_graph=True)
            return g[rows].flatten(1)

        f, g = _boundary(logits, y, target, grads, norm, rival)
        return logits.detach(), f, g
