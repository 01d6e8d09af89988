"""Target profiles: the shipped ones parse, mistakes are refused by name, ~/.ssh/config and flags win."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.errors import EmulatedTargetError, TargetConfigError
from toolchain.providers import resolve_profile
from toolchain.remote.target import load_profile, parse_profile, profile_path


def test_bluebox2_profile_describes_the_papers_box() -> None:
    profile = load_profile("bluebox2")
    assert (profile.arch, profile.cores, profile.cpu) == ("aarch64", 8, "Cortex-A72")
    assert profile.onnxruntime == "1.16.3" and profile.numpy == "1.26.4"
    assert profile.known_hosts == Path("~/.ssh/known_hosts").expanduser() and not profile.emulated
    assert profile.bench.threads == (1, 2, 4, 8)


def test_emulated_profile_is_labeled_emulated_and_names_its_instance() -> None:
    profile = load_profile("emulated")
    assert profile.emulated and profile.emulation is not None and profile.emulation.instance == "bluebox"


def test_unknown_key_is_refused_with_the_known_keys(tmp_path: Path) -> None:
    with pytest.raises(TargetConfigError) as caught:
        parse_profile(tmp_path / "target.toml", '[connection]\nhots = "box"\n')
    assert "unknown key 'hots'" in caught.value.message and "host" in (caught.value.hint or "")


def test_wrong_types_and_versions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TargetConfigError, match="wrong type"):
        parse_profile(tmp_path / "target.toml", '[connection]\nport = "22"\n')
    with pytest.raises(TargetConfigError, match="not a version"):
        parse_profile(tmp_path / "target.toml", '[runtime]\nonnxruntime = "latest; rm -rf /"\n')
    with pytest.raises(TargetConfigError, match="positive integers"):
        parse_profile(tmp_path / "target.toml", "[bench]\nthreads = [0]\n")


def test_missing_profile_names_the_ones_that_exist() -> None:
    with pytest.raises(TargetConfigError) as caught:
        profile_path("no-such-board")
    assert "bluebox2" in (caught.value.hint or "") and "emulated" in (caught.value.hint or "")


def test_ssh_config_alias_is_honoured_and_flags_override_it(tmp_path: Path) -> None:
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text("Host lab-box\n  HostName 127.0.0.1\n  User alice\n  Port 2222\n"
                          f"  IdentityFile {tmp_path}/id_lab\n  UserKnownHostsFile {tmp_path}/kh\n")
    profile_file = tmp_path / "target.toml"
    profile_file.write_text(f'[connection]\nhost = "lab-box"\nuser = "bluebox"\nssh_config = "{ssh_config}"\n')
    profile = resolve_profile(profile_file)
    assert (profile.host, profile.user, profile.port) == ("127.0.0.1", "alice", 2222)
    assert profile.identity_file == tmp_path / "id_lab" and profile.known_hosts == tmp_path / "kh"
    flagged = resolve_profile(profile_file, port=2200, user="bob")
    assert (flagged.host, flagged.user, flagged.port) == ("127.0.0.1", "bob", 2200)
    other = resolve_profile(profile_file, host="10.234.224.16")
    assert (other.host, other.user, other.port) == ("10.234.224.16", "bluebox", 22)


def test_a_profile_without_host_asks_for_one(tmp_path: Path) -> None:
    profile_file = tmp_path / "target.toml"
    profile_file.write_text('[target]\narch = "aarch64"\n')
    with pytest.raises(TargetConfigError) as caught:
        resolve_profile(profile_file)
    assert "--host" in (caught.value.hint or "")


def test_emulated_profile_refuses_early_when_its_instance_is_not_running(tmp_path: Path) -> None:
    profile_file = tmp_path / "target.toml"
    profile_file.write_text('emulated = true\n[emulation]\ninstance = "absent"\nsubnet = "10.200.77"\n')
    with pytest.raises(EmulatedTargetError) as caught:
        resolve_profile(profile_file)
    assert "toolchain target emulated up" in (caught.value.hint or "")
