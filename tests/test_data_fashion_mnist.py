"""Fashion-MNIST from Debian's dataset-fashion-mnist, and the errors for damaged idx files."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.data import assert_clear_error
from toolchain.data import load_dataset
from toolchain.errors import DatasetError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(scope="module")
def fashion_train(fashion_mnist_root):
    return load_dataset("fashion-mnist", "train", fashion_mnist_root)


@pytest.fixture
def fashion_copy(fashion_mnist_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the test split's files (tests damage it)."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name in FILES[2:]:
        shutil.copy(fashion_mnist_root / name, folder / name)
    return folder


def test_train_split_is_60000_one_channel_images_padded_to_32(fashion_train):
    assert fashion_train.images.shape == (60000, 1, 32, 32)
    assert fashion_train.images.dtype == torch.uint8
    assert fashion_train.num_classes == 10 and fashion_train.class_names[9] == "Ankle boot"


def test_test_split_is_10000_images(fashion_mnist_root):
    test = load_dataset("fashion-mnist", "test", fashion_mnist_root)
    assert test.images.shape == (10000, 1, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_padding_is_two_rows_and_columns_of_zeros_around_the_28x28_image(fashion_train):
    images = fashion_train.images
    border = torch.cat([images[:, :, :2].flatten(), images[:, :, -2:].flatten(),
                        images[:, :, :, :2].flatten(), images[:, :, :, -2:].flatten()])
    assert int(border.max()) == 0
    assert int(images[:, :, 2:30, 2:30].max()) == 255  # the image itself is inside


def test_labels_are_0_to_9_with_6000_each(fashion_train):
    assert torch.bincount(fashion_train.labels).tolist() == [6000] * 10


def test_pixels_match_the_idx_file(fashion_mnist_root, fashion_train):
    with gzip.open(fashion_mnist_root / FILES[0]) as handle:
        raw = np.frombuffer(handle.read(16 + 2 * 784)[16:], dtype=np.uint8).reshape(2, 28, 28)
    assert np.array_equal(fashion_train.images[:2, 0, 2:30, 2:30].numpy(), raw)


def test_limit_decodes_only_the_first_images(fashion_mnist_root, fashion_train):
    first = load_dataset("fashion-mnist", "train", fashion_mnist_root, limit=100)
    assert torch.equal(first.images, fashion_train.images[:100])
    assert torch.equal(first.labels, fashion_train.labels[:100])


def test_normalisation_uses_the_training_statistics(fashion_train):
    batch = fashion_train.normalize(fashion_train.images[:1000])
    inside = fashion_train.images[:1000, :, 2:30, 2:30].float() / 255
    black = fashion_train.normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8))
    assert black.item() == pytest.approx(-0.286 / 0.353)
    expected = (inside.mean().item() - 0.286) / 0.353
    assert batch[:, :, 2:30, 2:30].mean().item() == pytest.approx(expected, abs=1e-5)


def test_missing_folder_names_it_and_the_package(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", tmp_path / "absent")
    assert_clear_error(caught.value, str(tmp_path / "absent"))
    assert "dataset-fashion-mnist" in caught.value.hint


def test_missing_labels_file_is_named(fashion_copy):
    (fashion_copy / FILES[3]).unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", fashion_copy)
    assert_clear_error(caught.value, FILES[3])


def test_truncated_idx_file_is_a_one_line_error(fashion_copy):
    path = fashion_copy / FILES[2]
    with gzip.open(path) as handle:
        data = handle.read()
    with gzip.open(path, "wb", compresslevel=1) as handle:
        handle.write(data[: len(data) // 2])
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", fashion_copy)
    assert_clear_error(caught.value, "truncated", FILES[2])


def test_file_that_is_not_gzip_is_a_one_line_error(fashion_copy):
    (fashion_copy / FILES[2]).write_bytes(b"plain text, not gzip")
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", fashion_copy)
    assert_clear_error(caught.value, "malformed idx file")


def test_swapped_images_and_labels_files_are_detected(fashion_copy):
    images, labels = fashion_copy / FILES[2], fashion_copy / FILES[3]
    images.rename(fashion_copy / "swap")
    labels.rename(images)
    (fashion_copy / "swap").rename(labels)
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", fashion_copy)
    assert_clear_error(caught.value, "magic 2049, expected 2051")
    assert "swapped" in caught.value.hint


def test_labels_file_of_another_split_is_detected(fashion_copy, fashion_mnist_root):
    shutil.copy(fashion_mnist_root / FILES[1], fashion_copy / FILES[3])
    with pytest.raises(DatasetError) as caught:
        load_dataset("fashion-mnist", "test", fashion_copy)
    assert_clear_error(caught.value, "10000 images but 60000 labels")
