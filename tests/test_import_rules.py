"""The layout's import rules (docs/architecture.md), checked on the source: who may import what, who may print."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "toolchain"
TARGET_SIDE = PACKAGE / "agent"
HEAVY = {"onnx", "onnxruntime", "onnxsim", "paramiko"}


def _sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module an import statement of the file names (also inside functions), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
    return found


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


@pytest.mark.parametrize("area", ["models", "data"])
def test_models_and_data_import_no_onnx_runtime_or_ssh(area):
    offending = [f"{_where(path, line)} imports {name}" for path in _sources(PACKAGE / area)
                 for name, line in _imports(path) if name.split(".")[0] in HEAVY]
    assert offending == []


def test_the_target_side_package_imports_nothing_from_the_host_package():
    assert TARGET_SIDE.is_dir()
    offending = [f"{_where(path, line)} imports {name}" for path in _sources(TARGET_SIDE)
                 for name, line in _imports(path) if name.split(".")[0] == "toolchain"]
    assert offending == []


def test_the_host_package_never_imports_target_side_code():
    target_module = "toolchain." + ".".join(TARGET_SIDE.relative_to(PACKAGE.parent).parts[1:])
    offending = [f"{_where(path, line)} imports {name}" for path in _sources(PACKAGE)
                 if not path.is_relative_to(TARGET_SIDE)
                 for name, line in _imports(path) if name == target_module or name.startswith(target_module + ".")]
    assert offending == []


def _prints(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            function = node.func
            if isinstance(function, ast.Name) and function.id == "print":
                lines.append(node.lineno)
            elif (isinstance(function, ast.Attribute) and function.attr == "write"
                  and isinstance(function.value, ast.Attribute) and function.value.attr in ("stdout", "stderr")
                  and isinstance(function.value.value, ast.Name) and function.value.value.id == "sys"):
                lines.append(node.lineno)
    return lines


def test_nothing_below_the_cli_prints():
    # the target-side package talks to the host through its stdout/stderr by design
    allowed = (PACKAGE / "cli", TARGET_SIDE)
    offending = [_where(path, line) for path in _sources(PACKAGE)
                 if not any(path.is_relative_to(folder) for folder in allowed) for line in _prints(path)]
    assert offending == []
