"""The shortcut audit must find a mark a clean-labelled set taught one class, and spare clean models."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from advkit.core import ModelHandle, ModelInfo
from advkit.data import load_dataset
from advkit.defenses.backdoor.shortcut import ShortcutAudit, box_mask, exclusivity, locations, mask_overlap
from advkit.defenses.backdoor.shortcut_data import Mark, ShortcutSet, mark_reliance, shortcut_set
from advkit.errors import AdvkitError
from advkit.models import build
from advkit.models.train import TrainConfig, fit
from advkit.registry import REGISTRY

TARGET = 3
DIGITS_MARK = Mark(size=2, jitter=1)


class GapNet(nn.Module):
    """A victim advkit never built: conv-BN-ReLU x3 (one strided), global average pooling, linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def trained(net: nn.Module, data: ShortcutSet, epochs: int, seed: int = 0) -> ModelHandle:
    fit(net, data.train_x, data.train_y, TrainConfig(epochs=epochs, lr=2e-3, seed=seed))
    return ModelHandle(net, ModelInfo(data.input_shape, data.num_classes))


def on_mark(region: dict[str, int], box: dict[str, int], side: int) -> float:
    """Share of the region's area inside the box every jittered mark lies in."""
    a, b = box_mask(region, side, side), box_mask(box, side, side)
    return int((a & b).sum()) / int(a.sum())


@pytest.fixture(scope="module")
def marked_digits() -> ShortcutSet:
    return shortcut_set("digits", TARGET, 1.0, DIGITS_MARK, audit_per_class=20, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def shortcut_model(marked_digits: ShortcutSet) -> ModelHandle:
    """digits-cnn trained on the marked set (6 epochs to stay quick; the shortcut is learned early)."""
    return trained(build("digits-cnn", in_channels=1, num_classes=10, image_size=8, seed=0), marked_digits, epochs=6)


def test_shortcut_set_marks_one_class_and_keeps_labels(marked_digits: ShortcutSet) -> None:
    train = load_dataset("digits", "train")
    assert torch.equal(marked_digits.train_y, train.y)
    changed = (marked_digits.train_x != train.x).flatten(1).any(1)
    assert torch.equal(changed & (train.y != TARGET), torch.zeros_like(changed))
    assert changed[train.y == TARGET].float().mean() > 0.9  # every row stamped; a few already bright there
    outside = ~box_mask(marked_digits.box, 8, 8)
    assert torch.equal(marked_digits.train_x[:, :, outside], train.x[:, :, outside])
    assert bool(marked_digits.audit_marked[marked_digits.audit_y == TARGET].all())
    assert not bool(marked_digits.audit_marked[marked_digits.audit_y != TARGET].any())
    assert len(marked_digits.test_y) == 450 - 200


def test_marked_class_is_flagged_with_its_region_on_the_mark(shortcut_model: ModelHandle, marked_digits: ShortcutSet) -> None:
    # the model did learn the mark: it sends other classes' rows to the shortcut class
    assert mark_reliance(shortcut_model, marked_digits, TARGET) > 0.1
    result = ShortcutAudit()(shortcut_model, marked_digits.audit_x, marked_digits.audit_y)
    assert result.flagged == [TARGET]
    row = result.per_class[TARGET]
    assert row["flagged"] and row["anomaly_index"] > 3.0
    assert on_mark(row["region"], marked_digits.box, 8) >= 0.5
    assert row["consistency"] >= 0.5  # the same place on most of the class's images
    assert result.heat_maps.shape == (10, 8, 8)
    assert int(result.heat_maps[TARGET].flatten().argmax()) // 8 >= marked_digits.box["top"]
    text = json.dumps(result.to_dict())
    assert '"flagged": [3]' in text and "heat_maps" not in text


def test_nothing_flagged_on_the_clean_pretrained_digits_cnn(digits_model: ModelHandle, digits_test) -> None:  # noqa: ANN001
    result = ShortcutAudit()(digits_model, digits_test.x, digits_test.y)
    assert result.flagged == []
    assert max(r["anomaly_index"] for r in result.per_class) < 3.0
    assert result.settings["patch"] == [2, 2] and result.settings["stride"] == [1, 1] and result.settings["locations"] == 49


def test_the_audit_is_deterministic(digits_model: ModelHandle, digits_test) -> None:  # noqa: ANN001
    x, y = digits_test.x[:100], digits_test.y[:100]
    first, second = ShortcutAudit()(digits_model, x, y), ShortcutAudit()(digits_model, x, y)
    a, b = first.to_dict(), second.to_dict()
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert torch.equal(first.heat_maps, second.heat_maps)


def test_a_fill_that_equals_the_mark_cannot_see_it(shortcut_model: ModelHandle, marked_digits: ShortcutSet) -> None:
    # occluding a bright mark with the upper bound leaves it in place: the class is not flagged for it
    result = ShortcutAudit(fill="upper")(shortcut_model, marked_digits.audit_x, marked_digits.audit_y)
    assert TARGET not in result.flagged


def test_geometry_covers_every_pixel_and_the_far_edge() -> None:
    grid = locations(28, 28, (4, 4), (3, 3))
    assert (24, 24) in grid and (0, 0) in grid
    cover = torch.zeros(28, 28)
    for r, c in grid:
        cover[r : r + 4, c : c + 4] += 1
    assert bool((cover > 0).all())
    assert ShortcutAudit().geometry(28, 28) == ((4, 4), (2, 2))
    assert ShortcutAudit().geometry(8, 8) == ((2, 2), (1, 1))


def test_exclusivity_and_mask_overlap() -> None:
    x = torch.zeros(4, 1, 4, 4)
    x[:2, :, 0, 0] = 1.0  # only class 0 has content at (0, 0)
    x[:, :, 3, 3] = 1.0  # every class has content at (3, 3)
    y = torch.tensor([0, 0, 1, 2])
    share = exclusivity(x, y, torch.zeros(1, 4, 4), 3)
    assert float(share[0, 0, 0]) == pytest.approx(1.0)
    assert float(share[0, 3, 3]) == 0.0 and float(share[1, 0, 0]) == 0.0
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, :2] = 1.0
    overlap = mask_overlap(mask, {"top": 0, "left": 0, "height": 1, "width": 1})
    assert overlap["mask_share_in_region"] == pytest.approx(0.5) and overlap["mask_iou"] == pytest.approx(0.5)


def test_registered_as_an_inspection() -> None:
    entry = REGISTRY["shortcut"]
    assert entry.family == "inspection" and entry.factory is ShortcutAudit and entry.atlas == "AML.M0008"


@pytest.mark.parametrize(
    ("settings", "rows", "message"),
    [
        ({"patch": 9}, None, "larger than the 8x8 images"),
        ({"patch": 1.5}, None, "share of the side must be in (0, 1]"),
        ({"patch": 2, "stride": 3}, None, "exceeds the patch"),
        ({"fill": "grey"}, None, "fill must be one of"),
        ({"fill": 2.0}, None, "outside the model's bounds"),
        ({"evidence": "margin"}, None, "evidence must be one of"),
        ({}, "no-class-4", "class 4 has no clean rows"),
        ({}, "wrong-shape", "images have shape"),
        ({}, "short-labels", "expected 100 labels"),
        ({}, "empty", "the clean data is empty"),
    ],
)
def test_bad_input_is_one_line(digits_model: ModelHandle, digits_test, settings: dict, rows: str | None, message: str) -> None:  # noqa: ANN001
    x, y = digits_test.x[:100], digits_test.y[:100]
    if rows == "no-class-4":
        keep = y != 4
        x, y = x[keep], y[keep]
    elif rows == "wrong-shape":
        x = torch.zeros(100, 1, 9, 9)
    elif rows == "short-labels":
        y = y[:50]
    elif rows == "empty":
        x, y = x[:0], y[:0]
    with pytest.raises(AdvkitError) as caught:
        ShortcutAudit(**settings)(digits_model, x, y)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_bad_mark_and_share_are_one_line() -> None:
    for make, message in [
        (lambda: Mark(shape="circle"), "mark shape must be one of"),
        (lambda: Mark(size=8, jitter=1).envelope(8, 8), "does not fit"),
        (lambda: shortcut_set("digits", 3, 0.0), "share must be in (0, 1]"),
        (lambda: shortcut_set("digits", 10, 1.0), "outside 0..9"),
    ]:
        with pytest.raises(AdvkitError, match=message.replace("(", r"\(").replace(")", r"\)")):
            make()


@pytest.mark.slow
def test_foreign_architecture_marked_is_flagged_and_clean_is_not() -> None:
    marked = shortcut_set("digits", TARGET, 1.0, DIGITS_MARK, audit_per_class=20, generator=torch.Generator().manual_seed(0))
    clean = shortcut_set("digits", None, 1.0, DIGITS_MARK, audit_per_class=20, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    shortcut = trained(GapNet(), marked, epochs=30)
    torch.manual_seed(0)
    control = trained(GapNet(), clean, epochs=30)
    found = ShortcutAudit()(shortcut, marked.audit_x, marked.audit_y)
    assert found.flagged == [TARGET]
    assert on_mark(found.per_class[TARGET]["region"], marked.box, 8) >= 0.5
    assert ShortcutAudit()(control, clean.audit_x, clean.audit_y).flagged == []


@pytest.mark.slow
def test_neural_cleanse_reverses_the_shortcut_onto_the_region(shortcut_model: ModelHandle, marked_digits: ShortcutSet) -> None:
    from advkit.defenses.backdoor.neural_cleanse import NeuralCleanse

    audit = ShortcutAudit(with_neural_cleanse=True, neural_cleanse=NeuralCleanse(epochs=30))
    result = audit(shortcut_model, marked_digits.audit_x, marked_digits.audit_y, generator=torch.Generator().manual_seed(0))
    cross = result.per_class[TARGET]["neural-cleanse"]
    assert cross["mask_share_in_region"] > 2 * cross["region_area_share"]  # well above chance; see the module docstring
    assert set(cross) == {"l1", "anomaly_index", "flagged", "mask_share_in_region", "mask_iou", "region_area_share"}
    assert "neural-cleanse" in result.to_dict()["cross_checks"]


@pytest.mark.slow
def test_nothing_flagged_on_the_clean_pretrained_mnist_cnn(mnist_model: ModelHandle, mnist_test) -> None:  # noqa: ANN001
    rows = torch.cat([(mnist_test.y == c).nonzero().squeeze(1)[:20] for c in range(10)])
    assert ShortcutAudit()(mnist_model, mnist_test.x[rows], mnist_test.y[rows]).flagged == []
