"""Ansible-style inventories (INI or YAML) and `--limit` patterns, read without ansible-core.

INI: `[group]` sections of host lines (`name key=value ...`, ranges `web[01:03]` and `db-[a:c]`),
`[group:vars]` with `key=value` lines, `[group:children]` listing child groups; hosts before any section are
in `ungrouped`. YAML: `all:` (or any top-level group) with `hosts:`, `vars:` and `children:`. Every host is
in `all`. A host's variables are those of `all`, then of its groups from the shallowest to the deepest
(ties by name), then its own: Ansible's order.

The variables a fleet run reads (toolchain.fleet.hosts): `ansible_host`, `ansible_port`, `ansible_user`,
`ansible_ssh_private_key_file`, `ansible_python_interpreter`, `ansible_ssh_common_args` (its ProxyJump /
-J), and our own `toolchain_target` (the profile), `toolchain_workdir`, `toolchain_known_hosts`,
`toolchain_jump`.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from toolchain.errors import InventoryError, UsageError

ALL, UNGROUPED = "all", "ungrouped"
_RANGE = re.compile(r"\[([0-9]+|[a-z]):([0-9]+|[a-z])(?::([0-9]+))?\]")
_NAME = re.compile(r"^[A-Za-z0-9_.:@%+-]+$")


@dataclass(frozen=True)
class InventoryHost:
    """One host of an inventory: its name, the groups it is in (all included) and its merged variables."""

    name: str
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    """Groups (hosts, variables, children) and hosts (their own variables), as read from one file."""

    path: Path
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    groups: dict[str, "Group"] = field(default_factory=dict)

    def group(self, name: str) -> "Group":
        return self.groups.setdefault(name, Group(name))

    def add_host(self, group: str, name: str, values: dict[str, Any]) -> None:
        if not _NAME.match(name):
            raise InventoryError(f"{self.path}: host name {name!r} has characters an inventory name cannot have",
                                 "use letters, digits and . _ - : (an address goes into ansible_host=...)")
        self.hosts.setdefault(name, {}).update(values)
        self.group(group).hosts.append(name)

    # --- what a host is, once the file is read ------------------------------------------------

    def _parents(self) -> dict[str, set[str]]:
        parents: dict[str, set[str]] = {name: set() for name in self.groups}
        for group in self.groups.values():
            for child in group.children:
                parents.setdefault(child, set()).add(group.name)
        return parents

    def _depths(self) -> dict[str, int]:
        """How far each group is below `all` (the longest path, as Ansible orders variable precedence)."""
        parents = self._parents()
        depths: dict[str, int] = {}

        def depth(name: str, seen: tuple[str, ...]) -> int:
            if name in seen:
                raise InventoryError(f"{self.path}: group {name} is its own descendant ({' -> '.join(seen + (name,))})",
                                     "remove the loop from the :children sections")
            if name not in depths:
                above = [depth(parent, seen + (name,)) for parent in parents.get(name, ()) if parent != ALL]
                depths[name] = 0 if name == ALL else 1 + max(above, default=0)
            return depths[name]

        for name in list(self.groups):
            depth(name, ())
        return depths

    def _host_groups(self) -> dict[str, set[str]]:
        member: dict[str, set[str]] = {name: {ALL} for name in self.hosts}
        parents = self._parents()
        for group in self.groups.values():
            for host in group.hosts:
                todo, seen = [group.name], set()
                while todo:
                    name = todo.pop()
                    if name in seen:
                        continue
                    seen.add(name)
                    member[host].add(name)
                    todo.extend(parents.get(name, ()))
        for host, groups in member.items():
            if groups == {ALL}:
                groups.add(UNGROUPED)
        return member

    def resolved(self) -> list[InventoryHost]:
        """Every host with its merged variables, in the order the file lists them."""
        for group in self.groups.values():
            for child in group.children:
                if child not in self.groups:
                    raise InventoryError(f"{self.path}: group {group.name} names child group {child!r}, "
                                         "which the file does not define", f"add a [{child}] section, or remove it")
        depths = self._depths()
        member = self._host_groups()
        hosts = []
        for name, own in self.hosts.items():
            values: dict[str, Any] = {}
            for group in sorted(member[name], key=lambda item: (depths.get(item, 0), item)):
                values.update(self.groups[group].vars if group in self.groups else {})
            values.update(own)
            hosts.append(InventoryHost(name, tuple(sorted(member[name])), values))
        return hosts

    def group_names(self) -> set[str]:
        return set(self.groups) | {ALL, UNGROUPED}


@dataclass
class Group:
    name: str
    hosts: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    children: list[str] = field(default_factory=list)


# --- INI --------------------------------------------------------------------------------------


def expand_range(pattern: str) -> list[str]:
    """`web[01:03]` -> web01, web02, web03 (zero padding kept); `db-[a:c]`; `[1:9:2]` steps; nested: all of them."""
    match = _RANGE.search(pattern)
    if match is None:
        return [pattern]
    start, end, step = match.group(1), match.group(2), int(match.group(3) or 1)
    head, tail = pattern[:match.start()], pattern[match.end():]
    if start.isdigit() != end.isdigit() or step < 1:
        raise ValueError(f"bad range [{match.group(0)[1:-1]}]")
    if start.isdigit():
        width = len(start) if start.startswith("0") else 0
        values = [str(number).zfill(width) for number in range(int(start), int(end) + 1, step)]
    else:
        values = [chr(code) for code in range(ord(start), ord(end) + 1, step)]
    if not values:
        raise ValueError(f"empty range [{match.group(0)[1:-1]}]")
    return [name for value in values for name in expand_range(head + value + tail)]


def _ini_value(text: str) -> Any:
    """An INI value as Ansible reads it on a host line: integers, true/false, else the string."""
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _assignments(path: Path, number: int, words: Iterable[str]) -> dict[str, Any]:
    values = {}
    for word in words:
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise InventoryError(f"{path}:{number}: {word!r} is not key=value",
                                 "write host variables as name key=value key2=value2")
        values[key] = _ini_value(value)
    return values


def parse_ini(path: Path, text: str) -> Inventory:
    """An inventory from INI text (`path` for messages)."""
    inventory = Inventory(path)
    inventory.group(ALL)
    section, kind = UNGROUPED, "hosts"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            header = re.fullmatch(r"\[([^\]:\s]+)(?::(vars|children))?\]", line)
            if header is None:
                raise InventoryError(f"{path}:{number}: {line!r} is not a section header",
                                     "write [group], [group:vars] or [group:children]")
            section, kind = header.group(1), header.group(2) or "hosts"
            inventory.group(section)
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise InventoryError(f"{path}:{number}: {exc}", "close the quote on that line") from None
        if kind == "vars":
            key, equals, value = line.partition("=")
            if not equals or not key.strip():
                raise InventoryError(f"{path}:{number}: {line!r} is not key=value", f"in [{section}:vars] write "
                                     "one key=value per line")
            parsed = shlex.split(value, comments=True)
            inventory.group(section).vars[key.strip()] = _ini_value(parsed[0] if len(parsed) == 1 else value.strip())
        elif kind == "children":
            inventory.group(section).children.extend(words)
        elif words:
            try:
                names = expand_range(words[0])
            except ValueError as exc:
                raise InventoryError(f"{path}:{number}: {exc}", "write a range as [01:10] or [a:f]") from None
            values = _assignments(path, number, words[1:])
            for name in names:
                inventory.add_host(section, name, values)
    return inventory


# --- YAML -------------------------------------------------------------------------------------


def _yaml_group(inventory: Inventory, name: str, body: Any, where: str) -> None:
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise InventoryError(f"{inventory.path}: group {name} ({where}) must be a mapping",
                             "give it hosts:, vars: and/or children:")
    unknown = set(body) - {"hosts", "vars", "children"}
    if unknown:
        raise InventoryError(f"{inventory.path}: group {name} has unknown key {sorted(unknown)[0]!r}",
                             "a group has hosts:, vars: and children: only")
    group = inventory.group(name)
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, dict):
        raise InventoryError(f"{inventory.path}: hosts of group {name} must be a mapping of names",
                             "write each host as `name:` (with its variables below, or nothing)")
    for pattern, values in hosts.items():
        if values is not None and not isinstance(values, dict):
            raise InventoryError(f"{inventory.path}: variables of host {pattern} must be a mapping",
                                 "write them as key: value lines below the host")
        try:
            names = expand_range(str(pattern))
        except ValueError as exc:
            raise InventoryError(f"{inventory.path}: host {pattern}: {exc}", "write a range as [01:10]") from None
        for host in names:
            inventory.add_host(name, host, dict(values or {}))
    variables = body.get("vars") or {}
    if not isinstance(variables, dict):
        raise InventoryError(f"{inventory.path}: vars of group {name} must be a mapping", "write key: value lines")
    group.vars.update(variables)
    children = body.get("children") or {}
    if not isinstance(children, dict):
        raise InventoryError(f"{inventory.path}: children of group {name} must be a mapping of groups",
                             "write each child group as `name:` with its own hosts:")
    for child, child_body in children.items():
        group.children.append(str(child))
        _yaml_group(inventory, str(child), child_body, f"a child of {name}")


def parse_yaml(path: Path, text: str) -> Inventory:
    """An inventory from YAML text (`path` for messages)."""
    import yaml

    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InventoryError(f"{path} is not valid YAML: {' '.join(str(exc).split())}",
                             "fix the syntax (see docs/fleet.md for an example)") from None
    if not isinstance(document, dict):
        raise InventoryError(f"{path}: a YAML inventory is a mapping of groups", "start it with `all:`")
    inventory = Inventory(path)
    inventory.group(ALL)
    for name, body in document.items():
        _yaml_group(inventory, str(name), body, "top level")
    return inventory


def read_inventory(path: Path) -> list[InventoryHost]:
    """Every host of an inventory file (YAML by extension .yml/.yaml or a leading `---`/`all:`, else INI)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc.strerror or exc}",
                             "pass an Ansible inventory file (INI or YAML) with -i") from None
    except UnicodeDecodeError:
        raise InventoryError(f"inventory {path} is not text", "pass an Ansible inventory file (INI or YAML)") from None
    first = next((line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")),
                 "")
    is_yaml = path.suffix in (".yml", ".yaml") or first == "---" or re.match(r"^[A-Za-z0-9_-]+:\s*$", first)
    inventory = parse_yaml(path, text) if is_yaml else parse_ini(path, text)
    hosts = inventory.resolved()
    if not hosts:
        raise InventoryError(f"inventory {path} lists no host", "add host lines under a [group] section")
    return hosts


# --- --limit ----------------------------------------------------------------------------------


def _matches(pattern: str, host: InventoryHost) -> bool:
    return fnmatch.fnmatchcase(host.name, pattern) or any(fnmatch.fnmatchcase(group, pattern) for group in host.groups)


def select_hosts(hosts: list[InventoryHost], limit: str | None) -> list[InventoryHost]:
    """The hosts a `--limit` keeps: patterns (names of hosts or groups, wildcards) separated by `,` or `:`;
    `&pattern` intersects, `!pattern` excludes, as in Ansible. None: every host."""
    if not limit:
        return list(hosts)
    patterns = [part.strip() for part in re.split(r"[,:]", limit) if part.strip()]
    known = sorted({host.name for host in hosts} | {group for host in hosts for group in host.groups})
    for pattern in patterns:
        bare = pattern.lstrip("!&")
        # an exclusion that matches nothing excludes nothing; a name that matches nothing is a typo
        if not bare or (not pattern.startswith("!") and not any(_matches(bare, host) for host in hosts)):
            close = difflib.get_close_matches(bare, known, n=3)
            raise UsageError(f"--limit {pattern!r} matches no host or group of the inventory",
                             f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(known[:12])}")
    union = [pattern for pattern in patterns if pattern[0] not in "!&"]
    chosen = [host for host in hosts if not union or any(_matches(pattern, host) for pattern in union)]
    for pattern in patterns:
        if pattern.startswith("&"):
            chosen = [host for host in chosen if _matches(pattern[1:], host)]
        elif pattern.startswith("!"):
            chosen = [host for host in chosen if not _matches(pattern[1:], host)]
    if not chosen:
        raise UsageError(f"--limit {limit!r} leaves no host", "loosen the & and ! parts of the pattern")
    return chosen
