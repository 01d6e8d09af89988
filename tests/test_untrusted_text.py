"""Text from a target, a file name or a library is data: printed with markup off and control characters escaped.

The hostile target is the loopback OpenSSH server whose Python is a wrapper script written here: its
kernel release and Python version carry terminal escapes and rich markup (a sitecustomize patches what
`platform` reports, as a hostile box would), and its bootstrap fails with the same on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.sshd import LOOPBACK, LoopbackSSHD
from toolchain.cli import output
from toolchain.cli.output import plain

TOOLCHAIN = str(Path(sys.executable).with_name("toolchain"))
# sets the terminal title, clears the screen, closes a rich tag that was never opened, opens one
HOSTILE = "\x1b]0;owned\x07\x1b[2J[/x][bold red]\u202e"
HOSTILE_SHOWN = "\\x1b]0;owned\\x07\\x1b[2J[/x][bold red]\\u202e"

SITECUSTOMIZE = f"""
import platform
_version = platform.python_version()
platform.release = lambda: "6.1-" + {HOSTILE!r}
platform.python_version = lambda: _version + {HOSTILE!r}
"""


def test_plain_escapes_control_and_invisible_characters_and_keeps_the_rest() -> None:
    assert plain(HOSTILE) == HOSTILE_SHOWN
    assert plain("line\nnext\r\t") == "line\\x0anext\\x0d\\x09"
    assert plain("Cortex-A72 · 1.8 GHz, ü") == "Cortex-A72 · 1.8 GHz, ü"


def test_tables_and_messages_print_markup_literally(capsys: pytest.CaptureFixture[str]) -> None:
    output.table("[bold]t[/x]", ["check", "[/x]"], [("os", HOSTILE), ("n", None)])
    output.info(f"artifact: store [/x] {HOSTILE}")
    output.warn("[/yellow] done")
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "[bold]t[/x]" in captured.out and HOSTILE_SHOWN in captured.out
    assert f"artifact: store [/x] {HOSTILE_SHOWN}" in captured.err and "warning: [/yellow] done" in captured.err


def hostile_python(folder: Path) -> Path:
    """A target Python whose platform facts are hostile and whose `-c` programs (the bootstrap) fail loudly."""
    site = folder / "site"
    site.mkdir(parents=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (folder / "stderr.txt").write_text(f"boom {HOSTILE}\n")
    script = folder / "python3"
    script.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then cat '{folder}/stderr.txt' >&2; exit 1; fi\n"
                      f"PYTHONPATH='{site}' exec '{sys.executable}' \"$@\"\n")
    script.chmod(0o755)
    return script


def connection_options(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> list[str]:
    return ["--host", LOOPBACK, "--port", str(loopback_sshd.port), "--user", "root", "--identity-file",
            str(loopback_sshd.client_key), "--known-hosts", str(loopback_sshd.known_hosts(tmp_path)),
            "--workdir", str(tmp_path / "work"), "--python", str(hostile_python(tmp_path / "hostile"))]


@pytest.mark.sshd
def test_a_hostile_targets_facts_are_shown_as_data(loopback_sshd: LoopbackSSHD, tmp_path: Path) -> None:
    shown = subprocess.run([TOOLCHAIN, "target", "check", *connection_options(loopback_sshd, tmp_path)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout + shown.stderr and "\u202e" not in shown.stdout
    assert f"6.1-{HOSTILE_SHOWN}" in shown.stdout and HOSTILE_SHOWN in shown.stdout.split("python", 1)[1]


@pytest.mark.sshd
def test_a_hostile_targets_stderr_ends_as_one_plain_error_and_hint(loopback_sshd: LoopbackSSHD, tmp_path: Path,
                                                                   deploy_artifacts: object) -> None:
    artifact = deploy_artifacts.loadable_by_1_16  # type: ignore[attr-defined]
    failed = subprocess.run([TOOLCHAIN, "deploy", "--artifact", str(artifact),
                             *connection_options(loopback_sshd, tmp_path)], capture_output=True, text=True, timeout=120)
    lines = failed.stderr.strip().splitlines()
    assert failed.returncode == 1 and "\x1b" not in failed.stdout + failed.stderr
    assert lines[-2].startswith("error: ") and lines[-2].endswith(f"boom {HOSTILE_SHOWN}")
    assert lines[-1].startswith("hint: ") and "internal error" not in failed.stderr
    assert f"6.1-{HOSTILE_SHOWN}" in failed.stdout  # the preflight table shown before the error, as data
