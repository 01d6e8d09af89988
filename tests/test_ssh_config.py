"""~/.ssh/config as OpenSSH reads it: Include (relative to ~/.ssh, globs), Match host, wildcards, ProxyJump
chains through each hop's own entry, ProxyCommand tokens, and the profile's own proxy settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from toolchain.errors import TargetConfigError
from toolchain.providers import resolve_profile
from toolchain.remote.ssh_config import JumpHost, parse_jump, read_ssh_config
from toolchain.remote.target import open_transport


def profile_file(folder: Path, ssh_config: Path, host: str = "board", extra: str = "") -> Path:
    path = folder / "target.toml"
    path.write_text(f'[connection]\nhost = "{host}"\nssh_config = "{ssh_config}"\nuse_agent = false\n{extra}')
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home folder of the test's own (~ expands to it), with an empty ~/.ssh."""
    folder = tmp_path / "home"
    (folder / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(folder))
    return folder


def test_include_relative_to_dot_ssh_with_globs_and_match_host_and_wildcards(home: Path, tmp_path: Path) -> None:
    (home / ".ssh" / "conf.d").mkdir()
    (home / ".ssh" / "conf.d" / "10-lab.conf").write_text(
        "Host board\n  HostName 10.201.9.2\n  ProxyJump bastion\nHost bastion\n  HostName 10.201.9.1\n"
        "  User jumper\n  IdentityFile ~/.ssh/id_bastion\n")
    # Match host sees the HostName an earlier block set, as in OpenSSH; the globbed files go in name order
    (home / ".ssh" / "conf.d" / "15-match.conf").write_text("Match host 10.201.9.2\n  User matched\n")
    (home / ".ssh" / "conf.d" / "20-defaults.conf").write_text("Host *\n  User fallback\n  Port 2022\n")
    (home / ".ssh" / "config").write_text("Include conf.d/*.conf\n")
    profile = resolve_profile(profile_file(tmp_path, home / ".ssh" / "config"))
    assert (profile.host, profile.user, profile.port) == ("10.201.9.2", "matched", 2022)
    assert profile.jumps == (JumpHost("10.201.9.1", 2022, "jumper", home / ".ssh" / "id_bastion"),)


def test_a_jump_hosts_own_proxy_jump_comes_first_and_explicit_parts_win(home: Path, tmp_path: Path) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host board\n  ProxyJump admin@inner:2200,outer\nHost inner\n  HostName 10.201.9.3\n"
                      "  ProxyJump edge\n  User nobody\nHost edge outer\n  User edgeuser\n")
    profile = resolve_profile(profile_file(tmp_path, config), identity_file=tmp_path / "key")
    assert [(hop.user, hop.host, hop.port) for hop in profile.jumps] == [
        ("edgeuser", "edge", 22), ("admin", "10.201.9.3", 2200), ("edgeuser", "outer", 22)]
    assert all(hop.identity_file == tmp_path / "key" for hop in profile.jumps)


def test_the_jump_flag_overrides_the_config_and_none_connects_directly(home: Path, tmp_path: Path) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host board\n  HostName 10.201.9.2\n  ProxyJump bastion\n")
    target = profile_file(tmp_path, config)
    assert [hop.host for hop in resolve_profile(target, proxy_jump="other:2222").jumps] == ["other"]
    assert resolve_profile(target, proxy_jump="none").jumps == ()


def test_a_proxy_jump_loop_is_refused_by_name(home: Path, tmp_path: Path) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host *\n  ProxyJump bastion\n")
    with pytest.raises(TargetConfigError) as caught:
        resolve_profile(profile_file(tmp_path, config))
    assert "leads back to itself" in caught.value.message and "!bastion" in (caught.value.hint or "")


def test_proxy_command_tokens_are_expanded_from_the_config_and_the_profile(home: Path, tmp_path: Path) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host board\n  HostName 10.201.9.2\n  User pi\n  ProxyCommand relay %h %p %r\n")
    assert resolve_profile(profile_file(tmp_path, config)).proxy_command == "relay 10.201.9.2 22 pi"
    other = tmp_path / "other"
    other.mkdir()
    own = resolve_profile(profile_file(other, tmp_path / "absent", "10.201.9.5",
                                       'proxy_command = "nc -q0 %h %p %%"\nport = 2022\n'))
    assert own.proxy_command == "nc -q0 10.201.9.5 2022 %"
    settings = open_transport(own).settings  # type: ignore[attr-defined]
    assert settings.proxy_command == own.proxy_command and settings.jumps == ()


def test_jump_hosts_get_the_targets_known_hosts_policy(home: Path, tmp_path: Path) -> None:
    config = home / ".ssh" / "config"
    config.write_text("Host board\n  HostName 10.201.9.2\n  ProxyJump root@10.201.9.1\n")
    profile = resolve_profile(profile_file(tmp_path, config, extra=f'known_hosts = "{tmp_path}/kh"\n'))
    settings = open_transport(profile, accept_new_host_key=True).settings  # type: ignore[attr-defined]
    [hop] = settings.jumps
    assert (hop.host, hop.user, hop.known_hosts, hop.accept_new_host_key) == ("10.201.9.1", "root", tmp_path / "kh",
                                                                              True)


@pytest.mark.parametrize("spec, parsed", [("bastion", (None, "bastion", None)), ("u@b:2200", ("u", "b", 2200)),
                                          ("ssh://u@b:22", ("u", "b", 22)), ("[::1]:2022", (None, "::1", 2022))])
def test_jump_specs_parse_like_ssh_dash_j(spec: str, parsed: tuple) -> None:
    assert parse_jump(spec) == parsed


def test_a_bad_jump_spec_and_an_include_loop_are_config_errors(home: Path, tmp_path: Path) -> None:
    with pytest.raises(TargetConfigError, match="not \\[user@\\]host"):
        parse_jump("a b")
    looped = home / ".ssh" / "config"
    looped.write_text(f"Include {looped}\n")
    with pytest.raises(TargetConfigError, match="Include nested deeper"):
        read_ssh_config(looped)


def test_cli_shows_a_failing_proxy_command_as_one_error_and_one_hint(home: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    config = home / ".ssh" / "config"
    config.write_text("Host board\n  HostName 10.201.9.2\n  ProxyCommand false\n")
    target = profile_file(tmp_path, config, extra='connect_timeout = 2\n[target]\narch = "x86_64"\n')
    toolchain = str(Path(sys.executable).with_name("toolchain"))
    done = subprocess.run([toolchain, "target", "check", "--target", str(target)], capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 2, done.stderr
    assert lines[0].startswith("error: ") and "ProxyCommand" in lines[0] and lines[1].startswith("hint: ")
