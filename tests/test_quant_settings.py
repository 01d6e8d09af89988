"""Quantization settings decided for the host: 7-bit weights where onnxruntime's U8S8 kernels saturate."""

from __future__ import annotations

import pytest

from toolchain.pipeline.config import QuantSettings, u8s8_saturation_reason

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 ssse3 avx avx2 fma\n"
AVX512_VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"
AVX_VNNI = "processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n"


@pytest.mark.parametrize("text, saturates", [(AVX2_ONLY, True), (AVX512_VNNI, False), (AVX_VNNI, False),
                                             ("processor\t: 0\nflags\t\t: avx512f avx512bw\n", True)])
def test_x86_without_vnni_saturates(tmp_path, text, saturates):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    reason = u8s8_saturation_reason(cpuinfo, machine="x86_64")
    assert (reason is not None) is saturates
    if saturates:
        assert "VNNI" in reason


def test_arm_never_saturates_and_unreadable_x86_flags_are_treated_as_saturating(tmp_path):
    assert u8s8_saturation_reason(tmp_path / "missing", machine="aarch64") is None
    assert "cannot be read" in u8s8_saturation_reason(tmp_path / "missing", machine="x86_64")


def test_resolved_decides_reduce_range_only_when_left_unset():
    saturates = u8s8_saturation_reason()
    settings, reason = QuantSettings().resolved()
    assert settings.reduce_range is (saturates is not None) and reason == saturates
    assert QuantSettings(reduce_range=False).resolved() == (QuantSettings(reduce_range=False), None)
    assert QuantSettings(reduce_range=True).resolved() == (QuantSettings(reduce_range=True), None)
    # S8S8 never takes the U8S8 path: full 8-bit weights
    assert QuantSettings(activation_type="int8").resolved() == (
        QuantSettings(activation_type="int8", reduce_range=False), None)
    # resolving twice changes nothing (the hashed settings are the resolved ones)
    assert settings.resolved() == (settings, None)
