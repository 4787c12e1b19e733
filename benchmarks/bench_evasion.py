"""FGSM and PGD-10 on 1,000 MNIST images, as a ratio to the bare gradient floor.

The floor is k bare forward+backward passes (input gradient of the summed cross-entropy)
over the same batches in the same process: k=10 for PGD-10; FGSM's honest floor is its one
pass plus the forward pass that verifies the result. On a CPU a
pass costs more on perturbed images than on clean MNIST (mostly exact zeros), so the
floor's passes walk the same kind of inputs an attack sees: pass 1 on the clean batch,
each next pass on the previous input moved by one bare sign step (no projection to the
bounds, no tracking, no verification). advkit's
attacks add their mandatory work on top (clean prediction, projection, per-row best
tracking, the verifying forward pass). torchattacks and adv-lib (Rony's library:
``pip install --no-deps adv-lib``; it imports visdom and torchvision, which get empty
stand-in modules here) are timed on the same rows when installed.

Every round times the floor, advkit and the peer in turn (``common.interleaved``), so a
change in the machine's load falls on all of them; each case reports the min and the
median ratio over the rounds. PGD-10 runs at eps 0.1, 0.2 and 0.3, with the same budget
as torchattacks' PGD (10 steps, 1 restart): advkit with rows retiring at their goal (the
default) and with ``early_stop=False`` (fixed work), with the robust accuracy of each.
Run: ``python benchmarks/bench_evasion.py --repeats 5 --json bench-results/evasion.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved, parse_args, ratio_case, report  # noqa: E402

from advkit.attacks.evasion import FGSM, PGD  # noqa: E402
from advkit.core import Threat  # noqa: E402
from advkit.data import load_dataset  # noqa: E402
from advkit.models import pretrained  # noqa: E402

BATCH = 500
BUDGETS = (0.1, 0.2, 0.3)


def load_adv_lib() -> Any:
    """adv-lib's Linf PGD, or None. Its package imports visdom and torchvision at import
    time for loggers and ImageNet models the benchmark never uses: empty stand-ins."""
    import types

    try:
        import visdom  # noqa: F401
    except ImportError:
        sys.modules["visdom"] = types.ModuleType("visdom")
        sys.modules["visdom"].Visdom = object  # type: ignore[attr-defined]
    try:
        import torchvision  # noqa: F401
    except ImportError:
        vision = types.ModuleType("torchvision")
        vision.models = types.ModuleType("torchvision.models")  # type: ignore[attr-defined]
        sys.modules.setdefault("torchvision", vision)
        sys.modules.setdefault("torchvision.models", vision.models)  # type: ignore[attr-defined]
    try:
        from adv_lib.attacks import pgd_linf
    except ImportError:
        return None
    return pgd_linf


def main() -> None:
    args = parse_args(__doc__ or "")
    handle = pretrained("mnist-cnn")
    data = load_dataset("mnist5k", split="test", limit=1000)
    x, y = data.x, data.y
    network = handle.network.eval()
    for p in network.parameters():
        p.requires_grad_(False)  # attackers need input gradients only (so does the floor)
    try:
        import torchattacks
    except ImportError:
        torchattacks = None
    adv_lib_pgd = load_adv_lib()

    def floor(passes: int, eps: float) -> None:
        alpha = 2.5 * eps / 10
        for start in range(0, x.shape[0], BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            for _ in range(passes):
                x_in = xb.clone().requires_grad_(True)
                (grad,) = torch.autograd.grad(F.cross_entropy(network(x_in), yb, reduction="sum"), x_in)
                xb = xb + alpha * grad.sign()

    def floor_verified(eps: float) -> None:  # one pass, the FGSM point in the bounds, and the forward that re-checks it
        for start in range(0, x.shape[0], BATCH):
            xb, yb = x[start : start + BATCH], y[start : start + BATCH]
            x_in = xb.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(network(x_in), yb, reduction="sum"), x_in)
            with torch.inference_mode():
                network((xb + eps * grad.sign()).clamp(0, 1))

    def peer(attack: Any) -> Any:
        def run() -> torch.Tensor:
            return torch.cat([attack(x[s : s + BATCH], y[s : s + BATCH]) for s in range(0, x.shape[0], BATCH)])

        return run

    def accuracy(x_adv: torch.Tensor) -> float:
        with torch.inference_mode():
            return float((network(x_adv).argmax(1) == y).float().mean())

    cases: list[dict[str, Any]] = []
    fgsm = FGSM(Threat(eps=0.3), batch_size=BATCH)
    runs = {"floor": lambda: floor_verified(0.3), "advkit": lambda: fgsm(handle, x, y)}
    if torchattacks is not None:
        runs["torchattacks"] = peer(torchattacks.FGSM(network, eps=0.3))
    times = interleaved(runs, args.repeats)
    cases.append(ratio_case("advkit fgsm @0.3", times, "advkit", "floor", note="floor: one forward+backward plus the verifying forward"))
    if torchattacks is not None:
        cases.append(ratio_case("torchattacks fgsm @0.3", times, "torchattacks", "floor"))
    for eps in BUDGETS:
        retiring = PGD(Threat(eps=eps), steps=10, restarts=1, batch_size=BATCH)
        fixed = PGD(Threat(eps=eps), steps=10, restarts=1, early_stop=False, batch_size=BATCH)
        default = PGD(Threat(eps=eps), steps=10, batch_size=BATCH)
        runs = {
            "floor": lambda eps=eps: floor(10, eps),
            "advkit": lambda a=retiring: a(handle, x, y, generator=torch.Generator().manual_seed(0)),
            "fixed": lambda a=fixed: a(handle, x, y, generator=torch.Generator().manual_seed(0)),
            "default": lambda a=default: a(handle, x, y, generator=torch.Generator().manual_seed(0)),
        }
        if torchattacks is not None:
            runs["torchattacks"] = peer(torchattacks.PGD(network, eps=eps, alpha=2.5 * eps / 10, steps=10, random_start=True))
        if adv_lib_pgd is not None:  # same budget: 10 steps of 2.5 eps / 10 from a random start, 1 restart
            runs["adv-lib"] = peer(lambda xb, yb, eps=eps: adv_lib_pgd(network, xb, yb, eps, steps=10, absolute_step_size=2.5 * eps / 10))
        times = interleaved(runs, args.repeats)
        robust = {name: runs[name]().adversarial_accuracy for name in ("advkit", "fixed", "default")}
        for name in ("torchattacks", "adv-lib"):
            if name in runs:
                robust[name] = accuracy(runs[name]())
        for name, label in (("advkit", "advkit pgd-10, 1 restart, rows retire"), ("fixed", "advkit pgd-10, 1 restart, early_stop=False"), ("default", "advkit pgd-10, default 3 restarts")):
            extra: dict[str, Any] = {"eps": eps, "robust_accuracy": robust[name]}
            for peer_name, key in (("torchattacks", "torchattacks"), ("adv-lib", "adv_lib")):
                if peer_name in times:
                    extra[f"vs_{key}_min"] = times[name]["min"] / times[peer_name]["min"]
                    extra[f"vs_{key}_median"] = times[name]["median"] / times[peer_name]["median"]
            cases.append(ratio_case(f"{label} @{eps:g}", times, name, "floor", **extra))
        for peer_name in ("torchattacks", "adv-lib"):
            if peer_name in times:
                cases.append(ratio_case(f"{peer_name} pgd-10 @{eps:g}", times, peer_name, "floor", eps=eps, robust_accuracy=robust[peer_name]))
    report("evasion", cases, args.json, rows=int(x.shape[0]), batch_size=BATCH, model="zoo:mnist-cnn", repeats=args.repeats, interleaved=True)
    for c in cases:
        if "robust_accuracy" in c:
            vs = "".join(
                f"  vs {label} {c[f'vs_{key}_min']:.2f}x/{c[f'vs_{key}_median']:.2f}x"
                for label, key in (("torchattacks", "torchattacks"), ("adv-lib", "adv_lib"))
                if f"vs_{key}_min" in c
            )
            print(f"{c['case']:<48} robust {c['robust_accuracy']:.1%}{vs}")


if __name__ == "__main__":
    main()
