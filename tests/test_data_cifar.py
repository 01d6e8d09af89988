"""CIFAR-10 / CIFAR-100 loaders, on folders written in the exact format of the python archives."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from tests.fixtures.data import CIFAR10_NAMES, assert_clear_error, cifar_batch, cifar_rows, write_cifar_pickle
from toolchain.data import load_dataset
from toolchain.errors import DatasetError


def test_cifar10_loads_all_five_training_batches_and_the_test_batch(cifar10_folder):
    train = load_dataset("cifar10", "train", cifar10_folder.root)
    test = load_dataset("cifar10", "test", cifar10_folder.root)

    assert train.images.shape == (len(cifar10_folder.train_rows), 3, 32, 32)
    assert train.images.dtype == torch.uint8
    assert train.labels.tolist() == cifar10_folder.train_labels.tolist()
    assert test.labels.tolist() == cifar10_folder.test_labels.tolist()
    assert train.class_names == tuple(CIFAR10_NAMES)
    assert (train.name, train.split, test.split) == ("cifar10", "train", "test")
    assert train.mean == pytest.approx((0.4914, 0.4822, 0.4465))


def test_cifar10_rows_are_channel_major_red_then_green_then_blue(cifar10_folder):
    test = load_dataset("cifar10", "test", cifar10_folder.root)
    row = cifar10_folder.test_rows[3]

    image = test.images[3].numpy()
    assert np.array_equal(image[0], row[:1024].reshape(32, 32))
    assert np.array_equal(image[1], row[1024:2048].reshape(32, 32))
    assert np.array_equal(image[2], row[2048:].reshape(32, 32))
    # row-major inside a plane: the second value of the red plane is pixel (0, 1)
    assert image[0, 0, 1] == row[1] and image[0, 1, 0] == row[32]


def test_cifar10_accepts_the_batches_folder_itself(cifar10_folder):
    direct = load_dataset("cifar10", "test", cifar10_folder.folder)
    assert len(direct) == len(cifar10_folder.test_rows)


@pytest.mark.parametrize("name, classes", [("cifar100", 100), ("cifar100-coarse", 20)])
def test_cifar100_has_fine_and_coarse_label_sets(cifar100_folder, name, classes):
    train = load_dataset(name, "train", cifar100_folder.root)
    test = load_dataset(name, "test", cifar100_folder.root)

    expected = cifar100_folder.train_labels if classes == 100 else cifar100_folder.coarse_train_labels
    assert train.num_classes == classes and test.num_classes == classes
    assert train.labels.tolist() == expected.tolist()
    assert train.class_names[1] == ("fine01" if classes == 100 else "coarse01")
    assert np.array_equal(test.images[0].numpy().reshape(-1), cifar100_folder.test_rows[0])
    assert train.name == name


def test_limit_keeps_the_first_images(cifar10_folder):
    limited = load_dataset("cifar10", "train", cifar10_folder.root, limit=5)
    assert limited.labels.tolist() == cifar10_folder.train_labels[:5].tolist()


def test_missing_folder_names_the_path_and_what_was_expected(tmp_path):
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "train", tmp_path / "nowhere")
    assert_clear_error(caught.value, str(tmp_path / "nowhere" / "cifar-10-batches-py"))
    assert "data_batch_1..5" in caught.value.hint


def test_cifar_without_a_folder_asks_for_data_dir():
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar100", "train")
    assert_clear_error(caught.value, "needs a folder")
    assert "--data-dir" in caught.value.hint


def test_missing_training_batch_is_named(cifar10_folder):
    (cifar10_folder.folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "train", cifar10_folder.root)
    assert_clear_error(caught.value, "data_batch_3")


def test_malformed_pickle_is_a_one_line_error(cifar10_folder):
    (cifar10_folder.folder / "test_batch").write_bytes(b"this is not a pickle\n" * 10)
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "malformed CIFAR batch", "test_batch")


def test_truncated_pickle_is_a_one_line_error(cifar10_folder):
    path = cifar10_folder.folder / "test_batch"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "malformed CIFAR batch")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run > /dev/null",))


def test_pickle_that_would_run_code_is_refused(cifar10_folder):
    (cifar10_folder.folder / "test_batch").write_bytes(pickle.dumps({b"data": _RunsCode()}, protocol=2))
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "is not allowed")


def test_rows_of_the_wrong_width_are_refused(cifar10_folder):
    rows = np.zeros((4, 3000), dtype=np.uint8)
    write_cifar_pickle(cifar10_folder.folder / "test_batch", cifar_batch(rows, {"labels": [0] * 4}, "test"))
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "(4, 3000)")
    assert "3072" in caught.value.hint


def test_label_count_must_match_image_count(cifar10_folder):
    write_cifar_pickle(cifar10_folder.folder / "test_batch",
                       cifar_batch(cifar_rows(4, seed=0), {"labels": [0, 1, 2]}, "test"))
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "3 labels for 4 images")


def test_cifar100_file_in_a_cifar10_folder_is_refused(cifar10_folder):
    # a batch with fine/coarse labels has no b'labels' entry
    labels = {"fine_labels": [0] * 4, "coarse_labels": [0] * 4}
    write_cifar_pickle(cifar10_folder.folder / "test_batch", cifar_batch(cifar_rows(4, seed=0), labels, "x"))
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "no 'labels' entry")


def test_labels_outside_the_class_range_are_refused(cifar10_folder):
    write_cifar_pickle(cifar10_folder.folder / "test_batch",
                       cifar_batch(cifar_rows(2, seed=0), {"labels": [3, 57]}, "test"))
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10", "test", cifar10_folder.root)
    assert_clear_error(caught.value, "label outside 0..9")


def test_meta_file_must_be_a_dict(cifar100_folder):
    write_cifar_pickle(cifar100_folder.folder / "meta", [b"fine", b"coarse"])
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar100", "test", cifar100_folder.root)
    assert_clear_error(caught.value, "expected a dict, got list")
