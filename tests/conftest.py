"""Shared fixtures: the zoo models and builtin splits, built once per session."""

from __future__ import annotations

import pytest
import torch

from advkit.data import Dataset, load_dataset
from advkit.models import pretrained

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits_model():
    return pretrained("digits-cnn")


@pytest.fixture(scope="session")
def digits_test() -> Dataset:
    return load_dataset("digits", split="test")


@pytest.fixture(scope="session")
def digits_train() -> Dataset:
    return load_dataset("digits", split="train")


@pytest.fixture(scope="session")
def mnist_model():
    return pretrained("mnist-cnn")


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    return load_dataset("mnist5k", split="test")
