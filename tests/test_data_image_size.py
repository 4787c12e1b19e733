"""``image_size``: image folders of many sizes resized and centre-cropped (issue 20).

The expected pixels are computed here independently, with Pillow calls written out in
the test (torchvision's ``Resize(round(S / crop_fraction))`` + ``CenterCrop(S)`` on PIL
images), and compared pixel for pixel.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from advkit.data import load_dataset
from advkit.errors import AdvkitError

# (class, file, mode, width, height): mixed sizes, formats and modes
FILES = [
    ("a", "0.png", "RGB", 40, 30),
    ("a", "1.jpg", "RGB", 33, 50),
    ("a", "2.png", "RGBA", 64, 64),
    ("b", "0.png", "L", 30, 45),
    ("b", "1.jpg", "L", 50, 20),
    ("b", "2.png", "RGB", 64, 64),
]


def write_image(path, mode, width, height, seed):
    rng = np.random.default_rng(seed)
    channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
    pixels = rng.integers(0, 256, (height, width, *channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **({"quality": 90} if path.suffix == ".jpg" else {}))


def write_folder(root, files=FILES, seed=0):
    for i, (cls, name, mode, w, h) in enumerate(files):
        write_image(root / cls / name, mode, w, h, seed + i)
    return root


def expected(path, size, crop_fraction, mode):
    """Open, convert (alpha dropped), resize the shorter side bilinearly, take the centre."""
    with Image.open(path) as img:
        img = img.convert(mode)
    w, h = img.size
    shorter = round(size / crop_fraction)
    if w <= h:
        new_w, new_h = shorter, int(shorter * h / w)
    else:
        new_w, new_h = int(shorter * w / h), shorter
    img = img.resize((new_w, new_h), Image.BILINEAR, reducing_gap=None)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    arr = np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)
    t = torch.from_numpy(arr.copy()).float() / 255
    return t[None] if t.ndim == 2 else t.permute(2, 0, 1)


def test_mixed_sizes_are_resized_and_cropped_pixel_for_pixel(tmp_path):
    root = write_folder(tmp_path / "imgs")
    data = load_dataset(str(root), "all", image_size=16)
    assert data.x.shape == (6, 3, 16, 16) and data.y.tolist() == [0, 0, 0, 1, 1, 1]
    for row, (cls, name, *_rest) in enumerate(FILES):
        # every image as RGB (one colour image makes the whole set RGB), grey in each channel
        assert torch.equal(data.x[row], expected(root / cls / name, 16, 0.875, "RGB")), name
    record = {"image_size": 16, "crop_fraction": 0.875, "resize_shorter_side": 18, "interpolation": "bilinear, antialiased", "crop": "centre"}
    assert data.preprocessing == record
    train, test = load_dataset(str(root), "train", image_size=16), load_dataset(str(root), "test", image_size=16, limit=1)
    assert train.preprocessing == test.preprocessing == record  # subset() and head() keep it
    assert train.x.shape[1:] == test.x.shape[1:] == (3, 16, 16)
    wide = load_dataset(str(root), "all", image_size=20, crop_fraction=1.0)  # shorter side 20, no margin
    assert wide.preprocessing["resize_shorter_side"] == 20
    assert torch.equal(wide.x[1], expected(root / "a" / "1.jpg", 20, 1.0, "RGB"))


def test_greyscale_folder_stays_one_channel_and_16_bit_keeps_its_range(tmp_path):
    root = write_folder(tmp_path / "grey", [("a", "0.png", "L", 30, 45), ("b", "0.jpg", "L", 50, 20)])
    wide = np.linspace(0, 65535, 40 * 25).reshape(25, 40).astype(np.uint16)
    Image.fromarray(wide).save(root / "b" / "1.png")  # 16-bit grey, mode I;16
    data = load_dataset(str(root), "all", image_size=8)
    assert data.x.shape == (3, 1, 8, 8)
    assert torch.equal(data.x[0], expected(root / "a" / "0.png", 8, 0.875, "L"))
    # independently: scale to [0, 1] first, resize as 32-bit floats (mode F), then crop
    grey = Image.fromarray((wide.astype(np.float64) / 65535).astype(np.float32)).resize((14, 9), Image.BILINEAR, reducing_gap=None)
    crop = np.asarray(grey.crop((3, 0, 11, 8)), dtype=np.float32)
    assert torch.allclose(data.x[2, 0], torch.from_numpy(crop.copy()), atol=1e-6)
    assert len(torch.unique(data.x[2])) > 30 and float(data.x[2].max()) <= 1.0  # not clipped at 255, not 8-bit


def test_imagenet_layout_train_and_val_of_mixed_sizes(tmp_path):
    root = tmp_path / "inet"
    write_folder(root / "train", [("cat", "0.jpg", "RGB", 40, 30), ("dog", "0.png", "RGB", 33, 50)])
    write_folder(root / "val", [("cat", "1.jpg", "RGB", 64, 64), ("dog", "1.png", "L", 45, 31)], seed=10)
    with pytest.raises(AdvkitError, match="--image-size") as info:
        load_dataset(str(root), "train")
    assert "\n" not in str(info.value)
    train, test = load_dataset(str(root), "train", image_size=12), load_dataset(str(root), "test", image_size=12)
    assert train.x.shape == test.x.shape == (2, 3, 12, 12) and train.classes == test.classes == ["cat", "dog"]
    assert torch.equal(test.x[1], expected(root / "val" / "dog" / "1.png", 12, 0.875, "RGB"))
    assert train.preprocessing == test.preprocessing and train.preprocessing["resize_shorter_side"] == 14
    assert load_dataset(str(root), "all", image_size=12).x.shape == (4, 3, 12, 12)
    parts = tmp_path / "parts"  # each part of one size, the two parts not
    write_folder(parts / "train", [("cat", "0.png", "RGB", 8, 8), ("dog", "0.png", "RGB", 8, 8)])
    write_folder(parts / "val", [("cat", "0.png", "RGB", 9, 7), ("dog", "0.png", "RGB", 9, 7)])
    with pytest.raises(AdvkitError, match=r"val/cat/0.png: image size 9x7 differs from 8x8 of the others; pass --image-size S"):
        load_dataset(str(parts), "all")
    assert load_dataset(str(parts), "test").x.shape == (2, 3, 7, 9)  # each part of the layout is checked on its own
    assert load_dataset(str(parts), "all", image_size=6).x.shape == (4, 3, 6, 6)


def test_mixed_sizes_without_image_size_name_the_option_in_one_line(tmp_path):
    root = write_folder(tmp_path / "imgs")
    with pytest.raises(AdvkitError) as info:
        load_dataset(str(root), "all")
    message = str(info.value)
    assert "\n" not in message
    assert "a/1.jpg: image size 33x50 differs from 40x30 of the others" in message
    assert "--image-size S (config: image_size)" in message and "S x S" in message


def test_same_size_folder_without_image_size_is_unchanged(tmp_path):
    root = write_folder(tmp_path / "same", [("a", "0.png", "RGB", 9, 7), ("b", "0.png", "L", 9, 7)])
    data = load_dataset(str(root), "all")
    assert data.x.shape == (2, 3, 7, 9) and data.preprocessing is None  # the files' own pixels
    with Image.open(root / "a" / "0.png") as img:
        assert torch.equal(data.x[0], torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("image_size", [None, 16])
def test_corrupt_jpeg_is_one_line_naming_the_file(tmp_path, image_size):
    files = FILES if image_size else [(c, n, m, 40, 30) for c, n, m, _, _ in FILES]  # one size when nothing resizes
    root = write_folder(tmp_path / "imgs", files)
    good = (root / "a" / "1.jpg").read_bytes()
    (root / "a" / "1.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    with pytest.raises(AdvkitError, match=r"a/1\.jpg: unreadable image") as info:
        load_dataset(str(root), "all", image_size=image_size)
    assert "\n" not in str(info.value)


def test_arrays_take_only_their_own_size(tmp_path):
    plain = load_dataset("digits", "test", limit=20)
    same = load_dataset("digits", "test", limit=20, image_size=8)
    assert torch.equal(same.x, plain.x) and same.preprocessing is None
    with pytest.raises(AdvkitError, match=r"digits: the builtin set digits has a fixed image size of 8x8; --image-size 16") as info:
        load_dataset("digits", "test", image_size=16)
    assert "\n" not in str(info.value)
    npz = tmp_path / "d.npz"
    np.savez(npz, x=np.zeros((8, 5, 7), dtype=np.uint8), y=np.arange(8) % 2)
    with pytest.raises(AdvkitError, match=r"\.npz data has a fixed image size of 7x5"):
        load_dataset(str(npz), "all", image_size=5)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"image_size": 0}, "--image-size"),
        ({"image_size": -3}, "--image-size"),
        ({"image_size": 2.5}, "--image-size"),
        ({"image_size": 16, "crop_fraction": 0.0}, "crop_fraction must be in (0, 1]"),
        ({"image_size": 16, "crop_fraction": 1.5}, "crop_fraction must be in (0, 1]"),
        ({"image_size": 16, "crop_fraction": float("nan")}, "crop_fraction must be in (0, 1]"),
        ({"crop_fraction": -1.0}, "crop_fraction must be in (0, 1]"),
        ({"image_size": 100_000}, "decompression-bomb limit"),
    ],
)
def test_bad_resize_settings_are_one_line(tmp_path, kwargs, needle):
    root = write_folder(tmp_path / "imgs")
    with pytest.raises(AdvkitError) as info:
        load_dataset(str(root), "all", **kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_cli_attack_on_a_mixed_size_folder_records_the_preprocessing(tmp_path, capsys):
    from advkit.cli import main
    from advkit.core import ModelHandle, ModelInfo
    from advkit.models.architectures import build
    from advkit.models.io import save_model

    modes = ["RGB", "L", "RGBA", "RGB"]  # RGBA only as PNG (odd rows are JPEGs)
    files = [(cls, f"{i}.{'jpg' if i % 2 else 'png'}", modes[i % 4], 20 + 3 * i, 40 - i) for cls in ("cat", "dog") for i in range(16)]
    root = write_folder(tmp_path / "imgs", files)
    net = build("digits-cnn", in_channels=3, num_classes=2, image_size=16, seed=0)
    model = save_model(ModelHandle(net, ModelInfo((3, 16, 16), 2, classes=["cat", "dog"], arch="digits-cnn")), tmp_path / "m.safetensors")
    out = tmp_path / "out.json"
    argv = ["attack", "fgsm", "--model", str(model), "--data", str(root), "--limit", "8", "--no-checks", "--json", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "--image-size" in capsys.readouterr().err
    main([*argv, "--image-size", "16"])
    record = json.loads(out.read_text())
    assert record["n"] == 8 and record["attack"] == "fgsm"
    assert record["preprocessing"] == {
        "image_size": 16, "crop_fraction": 0.875, "resize_shorter_side": 18, "interpolation": "bilinear, antialiased", "crop": "centre",
    }
    same = write_folder(tmp_path / "same", [(cls, f"{i}.png", "RGB", 16, 16) for cls in ("cat", "dog") for i in range(8)])
    main(["attack", "fgsm", "--model", str(model), "--data", str(same), "--limit", "4", "--no-checks", "--json", str(out)])
    assert "preprocessing" not in json.loads(out.read_text())  # files read as they are: the record as before


def test_audit_config_image_size_reaches_both_splits(tmp_path):
    from advkit.audit.config import load_config
    from advkit.audit.runner import AuditRunner

    root = write_folder(tmp_path / "imgs", [(cls, f"{i}.png", "RGB", 20 + i, 30) for cls in ("a", "b") for i in range(4)])
    config_file = tmp_path / "audit.yaml"
    config_file.write_text(f"data: {root}\nimage_size: 12\ncrop_fraction: 1.0\n")
    runner = AuditRunner(load_config(config_file), tmp_path / "run")
    for data in (runner.eval_data(), runner.train_data()):
        assert data.x.shape[1:] == (3, 12, 12) and data.preprocessing["resize_shorter_side"] == 12
    config_file.write_text(f"data: {root}\ncrop_fraction: 0\n")
    with pytest.raises(AdvkitError, match="crop_fraction"):
        load_config(config_file)
