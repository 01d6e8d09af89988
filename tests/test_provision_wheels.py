"""Wheel selection over platform tags: which onnxruntime/numpy wheel fits a target's Python and glibc.

The file names are real ones from PyPI's onnxruntime and numpy listings (aarch64 wheels).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from toolchain.errors import ProvisioningError
from toolchain.remote.provision import (TargetPlatform, WheelFile, WheelIndex, manylinux_platforms,
                                        numpy_requirement, select_wheel, supported_tags)

ORT_AARCH64 = """
onnxruntime-1.6.0-cp35-cp35m-manylinux2014_aarch64.whl
onnxruntime-1.6.0-cp36-cp36m-manylinux2014_aarch64.whl
onnxruntime-1.6.0-cp37-cp37m-manylinux2014_aarch64.whl
onnxruntime-1.10.0-cp36-cp36m-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.10.0-cp39-cp39-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.16.3-cp38-cp38-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.16.3-cp39-cp39-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.16.3-cp310-cp310-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.16.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
onnxruntime-1.18.1-cp38-cp38-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
onnxruntime-1.18.1-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
onnxruntime-1.20.0-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
onnxruntime-1.20.0-cp313-cp313t-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
onnxruntime-1.25.0.dev20260417008-cp311-cp311-manylinux_2_28_aarch64.whl
onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_aarch64.whl
onnxruntime-1.32.0-cp313-cp313t-manylinux_2_28_aarch64.whl
onnxruntime-1.32.0-cp314-cp314-manylinux_2_28_aarch64.whl
onnxruntime-1.32.0-cp311-cp311-win_amd64.whl
onnxruntime-1.32.0.tar.gz
""".split()
NUMPY_AARCH64 = """
numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
numpy-1.26.4-cp311-cp311-musllinux_1_1_aarch64.whl
numpy-2.2.6-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl
numpy-2.3.5-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl
""".split()

STOCK_BLUEBOX = TargetPlatform(python=(3, 5), glibc=(2, 23), arch="aarch64")
BLUEBOX_PY311 = TargetPlatform(python=(3, 11), glibc=(2, 23), arch="aarch64")
EMULATED = TargetPlatform(python=(3, 11), glibc=(2, 36), arch="aarch64")


def wheels(names: list[str]) -> list[WheelFile]:
    return [wheel for wheel in map(WheelFile.parse, names) if wheel is not None]


def test_manylinux_platforms_run_from_the_targets_glibc_down_to_manylinux2014_on_aarch64() -> None:
    platforms = manylinux_platforms((2, 23), "aarch64")
    assert platforms[0] == "manylinux_2_23_aarch64"
    assert platforms[-2:] == ["manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert not any(name.startswith(("manylinux1", "manylinux2010")) for name in platforms)


def test_manylinux_platforms_include_the_legacy_x86_64_aliases() -> None:
    platforms = manylinux_platforms((2, 17), "x86_64")
    assert platforms[:2] == ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
    assert "manylinux2010_x86_64" in platforms and platforms[-1] == "manylinux1_x86_64"
    assert manylinux_platforms(None, "aarch64") == []


def test_python_35_tags_carry_the_m_abi() -> None:
    tags = {str(tag) for tag in supported_tags(STOCK_BLUEBOX)}
    assert "cp35-cp35m-manylinux2014_aarch64" in tags
    assert "cp35-cp35-manylinux2014_aarch64" not in tags
    assert "cp35-cp35m-manylinux_2_28_aarch64" not in tags


@pytest.mark.parametrize("platform, expected", [
    (STOCK_BLUEBOX, "1.6.0"),      # Ubuntu 16.04 as shipped: Python 3.5, glibc 2.23
    (BLUEBOX_PY311, "1.16.3"),     # a newer CPython on the same glibc: manylinux2014 only
    (TargetPlatform((3, 11), (2, 27), "aarch64"), "1.20.0"),
    (TargetPlatform((3, 8), (2, 28), "aarch64"), "1.18.1"),
    (EMULATED, "1.32.0"),          # Debian 12 arm64 under qemu: the newest
])
def test_newest_onnxruntime_that_fits_python_and_glibc_is_chosen(platform: TargetPlatform, expected: str) -> None:
    chosen = select_wheel("onnxruntime", wheels(ORT_AARCH64), platform)
    assert str(chosen.version) == expected
    assert chosen.filename.endswith("aarch64.whl")


def test_free_threaded_and_development_builds_are_never_picked() -> None:
    with pytest.raises(ProvisioningError, match="the target runs CPython 3.13"):
        select_wheel("onnxruntime", wheels(ORT_AARCH64), TargetPlatform((3, 13), (2, 36), "aarch64"))
    released = [name for name in ORT_AARCH64 if "1.32.0" not in name]
    assert str(select_wheel("onnxruntime", wheels(released), EMULATED).version) == "1.20.0"


def test_pinned_version_is_taken_even_when_newer_ones_fit() -> None:
    chosen = select_wheel("onnxruntime", wheels(ORT_AARCH64), EMULATED, version="1.16.3")
    assert chosen.filename == "onnxruntime-1.16.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"


def test_pinned_version_for_the_wrong_python_is_refused_with_the_version_that_fits() -> None:
    with pytest.raises(ProvisioningError) as caught:
        select_wheel("onnxruntime", wheels(ORT_AARCH64), STOCK_BLUEBOX, version="1.16.3")
    assert "cp38..cp311" in caught.value.message and "none for cp35m" in caught.value.message
    assert "1.6.0" in (caught.value.hint or "")


def test_pinned_version_needing_a_newer_glibc_is_refused_with_both_glibc_versions() -> None:
    with pytest.raises(ProvisioningError) as caught:
        select_wheel("onnxruntime", wheels(ORT_AARCH64), BLUEBOX_PY311, version="1.32.0")
    assert "glibc >= 2.28" in caught.value.message and "glibc 2.23" in caught.value.message
    assert "1.16.3" in (caught.value.hint or "")


def test_wrong_architecture_is_named_in_the_refusal() -> None:
    with pytest.raises(ProvisioningError) as caught:
        select_wheel("onnxruntime", wheels(ORT_AARCH64), TargetPlatform((3, 11), (2, 36), "x86_64"))
    assert "no x86_64 wheels" in caught.value.message


def test_numpy_choice_respects_the_runtimes_requirement_and_glibc() -> None:
    below_two = select_wheel("numpy", wheels(NUMPY_AARCH64), BLUEBOX_PY311, specifier=SpecifierSet("<2,>=1.21.6"))
    assert below_two.filename == "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    assert str(select_wheel("numpy", wheels(NUMPY_AARCH64), BLUEBOX_PY311).version) == "2.2.6"
    assert str(select_wheel("numpy", wheels(NUMPY_AARCH64), EMULATED).version) == "2.3.5"


def _wheel_with_metadata(folder: Path, requires: list[str]) -> Path:
    path = folder / "onnxruntime-1.16.3-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
    metadata = "Metadata-Version: 2.1\nName: onnxruntime\nVersion: 1.16.3\n" + \
        "".join(f"Requires-Dist: {line}\n" for line in requires)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("onnxruntime-1.16.3.dist-info/METADATA", metadata)
    return path


def test_numpy_requirement_reads_the_wheel_and_caps_old_runtimes_below_numpy_2(tmp_path: Path) -> None:
    wheel = _wheel_with_metadata(tmp_path, ["numpy>=1.21.6", "sympy; extra == 'symbolic'", "protobuf"])
    old = numpy_requirement(wheel, Version("1.16.3"))
    assert old.contains("1.26.4") and not old.contains("2.0.0") and not old.contains("1.20.0")
    assert numpy_requirement(wheel, Version("1.32.0")).contains("2.3.5")


def test_an_offline_wheel_folder_is_used_without_the_index(tmp_path: Path) -> None:
    for name in ORT_AARCH64[:3]:
        (tmp_path / name).write_bytes(b"")
    index = WheelIndex(cache_dir=tmp_path / "cache", index_url="http://127.0.0.1:9/never", wheel_dir=tmp_path)
    assert str(select_wheel("onnxruntime", index.files("onnxruntime"), STOCK_BLUEBOX).version) == "1.6.0"
    with pytest.raises(ProvisioningError, match="has no x86_64 wheels"):
        select_wheel("onnxruntime", index.files("onnxruntime"), TargetPlatform((3, 11), (2, 36), "x86_64"))
