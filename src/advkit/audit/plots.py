"""Plots for the audit report, rendered with matplotlib to inline PNG (base64)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import matplotlib

from advkit.audit.render.common import budget

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _image(array: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` -> something imshow draws (grey or RGB)."""
    return array[0] if array.shape[0] == 1 else np.transpose(array, (1, 2, 0))


def eps_curves(report: dict[str, Any]) -> str | None:
    """Accuracy under attack against eps, one line per (model, attack)."""
    rows = report["evasion"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    clean = {m["id"]: m["clean_accuracy"] for m in report["models"]}
    labels = {m["id"]: m["label"] for m in report["models"]}
    for (model, attack) in sorted({(r["model"], r["attack"]) for r in rows}):
        points = sorted((r["threat"]["eps"], r["adversarial_accuracy"]) for r in rows if r["model"] == model and r["attack"] == attack)
        xs = [0.0] + [p[0] for p in points]
        ys = [clean.get(model, points[0][1])] + [p[1] for p in points]
        ax.plot(xs, ys, marker="o", linestyle="-" if model == "model" else "--", label=f"{attack} on {labels.get(model, model)}")
    for model in sorted({w["model"] for w in report.get("evasion_worst", [])}):
        points = sorted((w["eps"], w["adversarial_accuracy"]) for w in report["evasion_worst"] if w["model"] == model)
        xs = [0.0] + [p[0] for p in points]
        ys = [clean.get(model, points[0][1])] + [p[1] for p in points]
        ax.plot(xs, ys, color="black", linewidth=2.2, linestyle="-" if model == "model" else "--", label=f"worst case on {labels.get(model, model)}")
    ax.set_xlabel(f"eps ({rows[0]['threat']['norm']})")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Robust accuracy vs budget")
    return _png(fig)


def class_heatmap(report: dict[str, Any], model: str = "model") -> str | None:
    """Per-class accuracy under the per-row worst case at each eps (which classes fall first)."""
    rows = sorted((w for w in report.get("evasion_worst", []) if w["model"] == model), key=lambda w: w["eps"])
    if not rows:
        return None
    budgets = [w["eps"] for w in rows]
    strongest = rows
    classes = sorted({c["class"] for r in strongest for c in r["per_class"]})
    grid = np.full((len(classes), len(budgets) + 1), np.nan)
    for j, record in enumerate(strongest):
        for entry in record["per_class"]:
            i = classes.index(entry["class"])
            grid[i, 0] = entry["clean_accuracy"]
            grid[i, j + 1] = entry["adversarial_accuracy"]
    names = report["provenance"]["model_info"]["classes"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * grid.shape[1], 0.8 + 0.32 * len(classes)))
    shown = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.0%}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(grid.shape[1]), ["clean"] + [f"{e:g}" for e in budgets])
    ax.set_yticks(range(len(classes)), [names[c] if c < len(names) else str(c) for c in classes])
    ax.set_xlabel("eps (worst case over every attack)")
    ax.set_ylabel("class")
    fig.colorbar(shown, ax=ax, fraction=0.04)
    ax.set_title("Per-class accuracy under attack")
    return _png(fig)


def examples(run_dir: Path, record: dict[str, Any], names: list[str]) -> str | None:
    """Clean, adversarial and amplified perturbation for the first rows of one attack."""
    path = run_dir / record["examples"]
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        x, x_adv, y = arrays["x"], arrays["x_adv"], arrays["y"]
        clean_pred, adv_pred = arrays["clean_pred"], arrays["adv_pred"]
    count = x.shape[0]
    fig, axes = plt.subplots(3, count, figsize=(1.3 * count, 4.2), squeeze=False)
    delta = x_adv - x
    scale = float(np.abs(delta).max()) or 1.0
    cmap = "gray" if x.shape[1] == 1 else None
    for k in range(count):
        axes[0, k].imshow(_image(x[k]), cmap=cmap, vmin=0, vmax=1)
        axes[0, k].set_title(f"{names[int(clean_pred[k])]} (true {names[int(y[k])]})", fontsize=7)
        axes[1, k].imshow(_image(x_adv[k]), cmap=cmap, vmin=0, vmax=1)
        axes[1, k].set_title(f"-> {names[int(adv_pred[k])]}", fontsize=7, color="red" if adv_pred[k] != y[k] else "black")
        axes[2, k].imshow(_image(delta[k] / (2 * scale) + 0.5), cmap="coolwarm" if cmap else None, vmin=0, vmax=1)
        for row in range(3):
            axes[row, k].axis("off")
    axes[0, 0].text(-0.3, 0.5, "clean", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    axes[1, 0].text(-0.3, 0.5, "adversarial", transform=axes[1, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    axes[2, 0].text(-0.3, 0.5, "perturbation", transform=axes[2, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(f"{record['attack']} eps={budget(record['threat']['eps'])} (perturbation amplified x{0.5 / scale:.1f})", fontsize=9)
    return _png(fig)


def triggers(run_dir: Path, record: dict[str, Any], names: list[str]) -> str | None:
    """The trigger Neural Cleanse reversed for every class (mask x pattern)."""
    path = run_dir / record["triggers"]
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as arrays:
        mask, pattern = arrays["mask"], arrays["pattern"]
    count = mask.shape[0]
    fig, axes = plt.subplots(1, count, figsize=(1.2 * count, 1.7), squeeze=False)
    rows = {r["class"]: r for r in record["classes"]}
    for k in range(count):
        shown = mask[k] * pattern[k]
        axes[0, k].imshow(_image(shown), cmap="gray" if shown.shape[0] == 1 else None, vmin=0, vmax=1)
        flagged = rows[k]["flagged"]
        axes[0, k].set_title(f"{names[k] if k < len(names) else k}\nL1 {rows[k]['score']:.1f}", fontsize=7, color="red" if flagged else "black")
        axes[0, k].axis("off")
    fig.suptitle("Reversed triggers (red: flagged as backdoor target)", fontsize=9)
    return _png(fig)


def repair_curve(mitigation: dict[str, Any]) -> str | None:
    """Mode-connectivity repair: clean accuracy and backdoor success along the curve (the auditor's view), the chosen t marked."""
    curve = mitigation.get("auditor_curve")
    if not curve:
        return None
    ts = [p["t"] for p in curve]
    fig, ax = plt.subplots(figsize=(5.6, 3.2))
    ax.plot(ts, [p["clean_accuracy"] for p in curve], marker="o", label="clean accuracy")
    ax.plot(ts, [p["backdoor_success"] for p in curve], marker="s", color="crimson", label="backdoor success")
    ax.axvline(mitigation["t"], color="gray", linestyle="--", label=f"chosen t = {mitigation['t']:.2f} (clean validation rows)")
    ax.set_xlabel("t along the curve (0 and 1: the fine-tuned ends)")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Mode-connectivity repair")
    return _png(fig)
