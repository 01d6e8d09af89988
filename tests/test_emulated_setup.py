"""The emulated Bluebox's set-up decisions that need no root: which Debian mirror, which names."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.errors import EmulatedTargetError
from toolchain.providers.emulated import FALLBACK_MIRROR, EmulatedBluebox, debian_mirror


def test_the_mirror_is_the_one_apt_uses_for_the_main_suite(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_one_line_sources_and_the_fallback(tmp_path: Path) -> None:
    assert debian_mirror(tmp_path) == FALLBACK_MIRROR
    (tmp_path / "sources.list").write_text("# comment\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://old.example/debian"


@pytest.mark.parametrize("instance, subnet", [("Bad Name", "10.200.0"), ("waytoolongname", "10.200.0"),
                                              ("ok", "10.200"), ("ok", "10.300.0")])
def test_instance_names_and_subnets_are_checked(instance: str, subnet: str) -> None:
    with pytest.raises(EmulatedTargetError):
        EmulatedBluebox(instance, subnet)


def test_an_instance_lives_in_its_own_namespace_and_subnet(tmp_path: Path) -> None:
    instance = EmulatedBluebox("ci", "10.200.3", cache=tmp_path)
    assert (instance.netns, instance.host_address, instance.address) == ("tc-ci", "10.200.3.1", "10.200.3.2")
    assert len(instance.host_veth) <= 15 and not instance.running()
    assert instance.down() is False
