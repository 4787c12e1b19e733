"""Train a hand-written ResNet-18/50 briefly on an image folder, then export it as TorchScript and ONNX.

    python benchmarks/realsize/build_models.py --data FOLDER --arch resnet18|resnet50
        --image-size 224 --epochs E --out DIR [--rows N] [--batch-size B] [--threads T]

The folder is read with advkit's own loader (``load_dataset(FOLDER, split=..., image_size=S)``:
shorter side resized to ``round(S / 0.875)``, centre S x S crop, pixels in [0, 1]);
``--rows N`` keeps the first N training rows. The model (``resnets.py``: BatchNorm, the
ImageNet normalisation inside as buffers) is trained with plain PyTorch on the CPU: SGD
with Nesterov momentum 0.9 (or AdamW), a linear warm-up then a cosine schedule per step,
and a random-translation augmentation (reflect-pad by S/8, random S x S crop; no flips:
digits are not mirror-symmetric). Then, in eval mode:

* ``DIR/<arch>.pt``: TorchScript (``torch.jit.script``; ``torch.jit.trace`` if scripting fails);
* ``DIR/<arch>.onnx``: ``torch.onnx.export(dynamo=False, opset_version=17)``, input
  ``"input"``, output ``"logits"``, the batch axis dynamic. As with any eval-mode export
  through this exporter, each BatchNorm is folded into its convolution; ``--onnx-keep-bn``
  (``do_constant_folding=False``) keeps them as ``BatchNormalization`` nodes;
* ``DIR/<arch>-training.json``: test accuracy, epochs, seconds, rows, settings and the
  check below. (Not ``<arch>.json``: advkit's ``load_model`` reads ``<stem>.json`` beside
  a model file as its metadata sidecar, so a record there would be mistaken for one.)

Before finishing it loads both files back with ``advkit.models.io.load_model`` (the ONNX
file through onnx2torch, the TorchScript one with ``sample_shape=(3, S, S)``), runs a few
test images through each handle's ``logits`` and checks that they match the eager model's
to a max abs diff below 1e-3 (exit status 1 when not).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from resnets import ARCHS

from advkit.data import load_dataset
from advkit.fileio import write_json
from advkit.models.io import load_model

TOLERANCE = 1e-3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="image folder (class sub-folders, or train/ and val/)")
    p.add_argument("--arch", required=True, choices=sorted(ARCHS))
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--rows", type=int, default=None, help="use only the first N training rows")
    p.add_argument("--test-rows", type=int, default=None, help="use only the first N test rows (default all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.05 * B / 64 for SGD, 1e-3 for AdamW)")
    p.add_argument("--weight-decay", type=float, default=None, help="default 5e-4 (SGD), 0.05 (AdamW); not on BN or biases")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up (at most 20 %% of the steps)")
    p.add_argument("--no-augment", action="store_true", help="no random translation")
    p.add_argument(
        "--memory-format",
        choices=("channels_last", "contiguous"),
        default="channels_last",
        help="layout for training and evaluation (default channels_last: oneDNN's NHWC, faster at 128 px and up here)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None, help="start from the weights of a TorchScript file this script wrote (progressive resizing: train small, then fine-tune at full size)")
    p.add_argument(
        "--onnx-keep-bn",
        action="store_true",
        help="export with do_constant_folding=False, keeping BatchNormalization nodes (by default torch folds them into the convolutions)",
    )
    p.add_argument("--check-rows", type=int, default=5, help="test images for the eager/ONNX/TorchScript check")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 2 or args.image_size < 8:
        p.error("need --epochs >= 1, --batch-size >= 2, --image-size >= 8")
    return args


def translate(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Each image shifted by up to ``pad`` pixels each way (reflect padding, then a random crop)."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on convolution and linear weights only."""
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        (decay if param.dim() > 1 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def schedule(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@torch.inference_mode()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, fmt: torch.memory_format) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        xb = x[i : i + batch_size].contiguous(memory_format=fmt)
        correct += int((model(xb).argmax(1) == y[i : i + batch_size]).sum())
    return correct / max(1, len(y))


def train(model: nn.Module, x: Tensor, y: Tensor, args: argparse.Namespace, fmt: torch.memory_format) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(args.seed)
    n = len(y)
    batch = min(args.batch_size, n)
    steps_per_epoch = n // batch  # drop the last partial batch (BatchNorm needs > 1 image)
    total = steps_per_epoch * args.epochs
    warmup = max(1, min(round(args.warmup_epochs * steps_per_epoch), total // 5))
    if args.optimizer == "sgd":
        lr = args.lr if args.lr is not None else 0.05 * batch / 64
        wd = args.weight_decay if args.weight_decay is not None else 5e-4
        opt: torch.optim.Optimizer = torch.optim.SGD(param_groups(model, wd), lr=lr, momentum=0.9, nesterov=True)
    else:
        lr = args.lr if args.lr is not None else 1e-3
        wd = args.weight_decay if args.weight_decay is not None else 0.05
        opt = torch.optim.AdamW(param_groups(model, wd), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(total, warmup))
    pad = 0 if args.no_augment else max(1, args.image_size // 8)
    print(
        f"training {args.arch}: {n} rows, {args.epochs} epochs x {steps_per_epoch} steps of {batch}, "
        f"{args.optimizer} lr {lr:g} wd {wd:g}, warm-up {warmup} steps, translate +-{pad} px, {torch.get_num_threads()} threads",
        flush=True,
    )
    history = []
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            xb, yb = translate(x[idx], pad, gen).contiguous(memory_format=fmt), y[idx]
            out = model(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(yb)
            correct += int((out.argmax(1) == yb).sum())
            seen += len(yb)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": loss_sum / seen, "train_accuracy": correct / seen, "seconds": seconds}
        history.append(record)
        print(
            f"  epoch {epoch + 1}/{args.epochs}: loss {record['loss']:.4f}, train acc {record['train_accuracy']:.3f}, "
            f"{seconds:.1f} s",
            flush=True,
        )
    return {
        "seconds": time.perf_counter() - start,
        "history": history,
        "optimizer": args.optimizer,
        "lr": lr,
        "weight_decay": wd,
        "warmup_steps": warmup,
        "steps": total,
        "batch_size": batch,
        "translate_px": pad,
    }


def export(model: nn.Module, out: Path, arch: str, size: int, keep_bn: bool = False) -> dict[str, Any]:
    """Write ``<arch>.pt`` (TorchScript) and ``<arch>.onnx``; the model in eval mode, NCHW weights."""
    model.eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    pt_path, onnx_path = out / f"{arch}.pt", out / f"{arch}.onnx"
    try:
        scripted = torch.jit.script(model)
        how = "script"
    except Exception as exc:  # noqa: BLE001 - torch.jit raises many types
        print(f"torch.jit.script failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); tracing instead")
        scripted = torch.jit.trace(model, example)
        how = "trace"
    scripted.save(str(pt_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter's notice
        torch.onnx.export(
            model,
            (example,),
            str(onnx_path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=not keep_bn,
        )
    import onnx

    graph = onnx.load(str(onnx_path))
    onnx.checker.check_model(graph)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_param or d.dim_value for d in dims]
    ops = sorted({node.op_type for node in graph.graph.node})
    print(f"wrote {pt_path} (torch.jit.{how}) and {onnx_path} (input {graph.graph.input[0].name} {shape}; ops {', '.join(ops)})")
    return {
        "torchscript": {"path": pt_path.name, "how": how, "bytes": pt_path.stat().st_size},
        "onnx": {"path": onnx_path.name, "opset": 17, "batchnorm_folded": "BatchNormalization" not in ops, "input": graph.graph.input[0].name, "input_shape": shape, "ops": ops, "bytes": onnx_path.stat().st_size},
    }


def check(model: nn.Module, out: Path, arch: str, x: Tensor) -> dict[str, Any]:
    """Max abs logit diff of the files as advkit loads them against the eager model."""
    model.eval()
    with torch.inference_mode():
        eager = model(x)
    size = tuple(x.shape[1:])
    result: dict[str, Any] = {"rows": len(x), "tolerance": TOLERANCE}
    for kind, path, kwargs in (
        ("onnx", out / f"{arch}.onnx", {}),
        ("torchscript", out / f"{arch}.pt", {"sample_shape": size}),
    ):
        t0 = time.perf_counter()
        handle = load_model(str(path), **kwargs)
        loaded = time.perf_counter() - t0
        with torch.inference_mode():
            got = handle.logits(x)
        diff = float((got - eager).abs().max())
        same = bool((got.argmax(1) == eager.argmax(1)).all())
        result[kind] = {
            "max_abs_diff": diff,
            "same_predictions": same,
            "load_seconds": loaded,
            "input_shape": list(handle.input_shape),
            "num_classes": handle.num_classes,
        }
        print(
            f"check {kind}: load_model -> input {list(handle.input_shape)}, {handle.num_classes} classes "
            f"({loaded:.1f} s); max abs logit diff vs eager on {len(x)} images {diff:.3g}; same predictions: {same}"
        )
    result["ok"] = all(result[k]["max_abs_diff"] < TOLERANCE for k in ("onnx", "torchscript"))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    t0 = time.perf_counter()
    train_set = load_dataset(args.data, split="train", image_size=args.image_size, limit=args.rows)
    test_set = load_dataset(args.data, split="test", image_size=args.image_size, limit=args.test_rows)
    load_seconds = time.perf_counter() - t0
    print(
        f"loaded {args.data}: {len(train_set)} train, {len(test_set)} test rows of {list(train_set.input_shape)}, "
        f"{train_set.num_classes} classes ({load_seconds:.1f} s)",
        flush=True,
    )
    if train_set.input_shape[0] != 3:
        raise SystemExit(f"{args.data}: the images load as {train_set.input_shape[0]} channel(s); the ResNets take RGB")

    fmt = torch.channels_last if args.memory_format == "channels_last" else torch.contiguous_format
    model = ARCHS[args.arch](train_set.num_classes)
    if args.init is not None:  # the scripted model's state dict has the eager model's keys
        model.load_state_dict(torch.jit.load(str(args.init), map_location="cpu").state_dict())
        print(f"initialised from {args.init}")
    model = model.to(memory_format=fmt)
    params = sum(p.numel() for p in model.parameters())
    fit = train(model, train_set.x, train_set.y, args, fmt)
    t0 = time.perf_counter()
    test_acc = accuracy(model, test_set.x, test_set.y, max(args.batch_size, 64), fmt)
    eval_seconds = time.perf_counter() - t0
    print(f"test accuracy {test_acc:.4f} on {len(test_set)} rows ({eval_seconds:.1f} s); training took {fit['seconds']:.1f} s")

    files = export(model, args.out, args.arch, args.image_size, args.onnx_keep_bn)
    checked = check(model, args.out, args.arch, test_set.x[: args.check_rows])

    record = {
        "arch": args.arch,
        "parameters": params,
        "num_classes": train_set.num_classes,
        "classes": train_set.classes,
        "data": str(args.data),
        "image_size": args.image_size,
        "preprocessing": train_set.preprocessing,
        "rows": len(train_set),
        "test_rows": len(test_set),
        "epochs": args.epochs,
        "test_accuracy": test_acc,
        "seconds": fit["seconds"],
        "seconds_per_epoch": fit["seconds"] / args.epochs,
        "seconds_load": load_seconds,
        "seconds_eval": eval_seconds,
        "seconds_total": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "seed": args.seed,
        "augment": not args.no_augment,
        "memory_format": args.memory_format,
        "training": fit,
        "files": files,
        "check": checked,
        "normalisation": {"mean": list(model.normalize.mean.flatten().tolist()), "std": list(model.normalize.std.flatten().tolist()), "inside_model": True},
    }
    write_json(args.out / f"{args.arch}-training.json", record)
    print(f"wrote {args.out / f'{args.arch}-training.json'} ({record['seconds_total']:.1f} s in all)")
    if not checked["ok"]:
        print(f"FAILED: a loaded model's logits differ from the eager model's by {TOLERANCE} or more", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
