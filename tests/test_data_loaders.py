"""Image folders, the synthetic set, dataset names, subsets and the batch pipeline with augmentation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.fixtures.data import assert_clear_error
from toolchain.data import load_dataset, iterate_batches
from toolchain.data.transforms import random_crop, random_hflip
from toolchain.errors import DatasetError


@pytest.fixture
def image_folder(tmp_path):
    """ROOT/{train,test}/<class>/ with solid-colour PNGs: cats are red, dogs are blue."""
    colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
    for split, count in (("train", 3), ("test", 2)):
        for name, colour in colours.items():
            folder = tmp_path / "pets" / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                Image.new("RGB", (40, 20), colour).save(folder / f"{index}.png")
            (folder / "notes.txt").write_text("not an image")
    return tmp_path / "pets"


def test_image_folder_classes_are_sorted_folder_names(image_folder):
    train = load_dataset("imagefolder", "train", image_folder)
    assert train.class_names == ("cat", "dog")
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert train.images.shape == (6, 3, 32, 32)  # resized, channel-major
    assert train.images[0, :, 5, 5].tolist() == [255, 0, 0]
    assert train.images[5, :, 5, 5].tolist() == [0, 0, 255]


def test_image_folder_normalisation_is_measured_on_the_split(image_folder):
    train = load_dataset("imagefolder", "train", image_folder)
    assert train.mean == pytest.approx((0.5, 0.0, 0.5))
    assert train.std[0] == pytest.approx(0.5)


def test_image_folder_in_grey(image_folder):
    grey = load_dataset("imagefolder", "test", image_folder, channels=1)
    assert grey.images.shape == (4, 1, 32, 32)


def test_image_folder_without_the_split_names_the_expected_layout(image_folder):
    with pytest.raises(DatasetError) as caught:
        load_dataset("imagefolder", "train", image_folder / "test")
    assert_clear_error(caught.value, str(image_folder / "test" / "train"))
    assert "<class name>" in caught.value.hint


def test_image_folder_with_no_class_folders(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError) as caught:
        load_dataset("imagefolder", "train", tmp_path)
    assert_clear_error(caught.value, "no class folders")


def test_unreadable_image_is_named(image_folder):
    bad = image_folder / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetError) as caught:
        load_dataset("imagefolder", "train", image_folder)
    assert_clear_error(caught.value, str(bad))


def test_synthetic_is_deterministic_and_splits_differ():
    first, again = load_dataset("synthetic", "train", limit=64), load_dataset("synthetic", "train", limit=64)
    test = load_dataset("synthetic", "test", limit=64)
    assert torch.equal(first.images, again.images) and torch.equal(first.labels, again.labels)
    assert not torch.equal(first.images, test.images)
    assert load_dataset("synthetic", "test").images.shape == (512, 3, 32, 32)


def test_unknown_dataset_name_suggests_the_closest():
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar-10", "train")
    assert_clear_error(caught.value, "unknown dataset 'cifar-10'")
    assert "cifar10" in caught.value.hint


def test_unknown_split_is_refused():
    with pytest.raises(DatasetError) as caught:
        load_dataset("synthetic", "validation")
    assert_clear_error(caught.value, "unknown split 'validation'")


def test_sample_is_a_deterministic_sorted_subset():
    data = load_dataset("synthetic", "train", limit=100)
    one, two = data.sample(10, seed=3), data.sample(10, seed=3)
    assert torch.equal(one.images, two.images)
    assert not torch.equal(one.images, data.sample(10, seed=4).images)
    assert data.sample(1000, seed=0) is data


def test_random_crop_keeps_the_shape_and_cuts_a_window_of_the_padded_image():
    images = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8) + 1
    cropped = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for index in range(2):
        windows = [padded[index, :, top:top + 8, left:left + 8] for top in range(5) for left in range(5)]
        assert any(torch.equal(cropped[index], window) for window in windows)
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_horizontal_flip_mirrors_about_half_of_the_batch():
    images = torch.rand(64, 3, 8, 8)
    flipped = random_hflip(images, torch.Generator().manual_seed(0))
    mirrored = [torch.equal(out, image.flip(2)) for out, image in zip(flipped, images)]
    unchanged = [torch.equal(out, image) for out, image in zip(flipped, images)]
    assert all(m != u for m, u in zip(mirrored, unchanged))  # each image is one or the other
    assert 16 < sum(mirrored) < 48


def test_batches_cover_every_image_once_and_are_normalised():
    data = load_dataset("synthetic", "train", limit=100)
    batches = list(iterate_batches(data, 32, shuffle=True, generator=torch.Generator().manual_seed(1)))
    assert [len(labels) for _, labels in batches] == [32, 32, 32, 4]
    labels = torch.cat([labels for _, labels in batches])
    assert sorted(labels.tolist()) == sorted(data.labels.tolist())
    images = torch.cat([images for images, _ in batches])
    assert images.dtype == torch.float32
    expected = (data.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(images.sum(), expected.sum(), rtol=1e-4)


def test_augmented_batches_are_reproducible_with_the_same_generator():
    data = load_dataset("synthetic", "train", limit=64)
    runs = [list(iterate_batches(data, 16, shuffle=True, augment=True,
                                 generator=torch.Generator().manual_seed(7))) for _ in range(2)]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*runs))
    plain = list(iterate_batches(data, 16, shuffle=True, generator=torch.Generator().manual_seed(7)))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], plain))
