"""File transfer over an exec channel, for SSH servers without SFTP (dropbear on most Yocto/Buildroot boards).

The file goes to `<remote>.part` through `cat`, its sha256 is checked there by whichever tool the target
has (coreutils or BusyBox `sha256sum`, else `openssl`), and only a match is renamed to `<remote>`; any
failure removes the part file. The scripts are POSIX sh (dash, BusyBox ash) with every path passed as
a positional argument, never spliced into the script.
"""

from __future__ import annotations

import re

PART_SUFFIX = ".part"
# $1 part file, $2 expected sha256, $3 final name
_PUT_SCRIPT = (
    'cat > "$1" || { rm -f "$1"; exit 1; }\n'
    'h=$(sha256sum "$1" 2>/dev/null || busybox sha256sum "$1" 2>/dev/null || openssl dgst -sha256 -r "$1") '
    '|| { rm -f "$1"; echo "no sha256sum, busybox or openssl on the target to check the copy" >&2; exit 1; }\n'
    'h=${h%% *}\n'
    'if [ "$h" != "$2" ]; then rm -f "$1"; echo "the copy arrived with sha256 $h, expected $2" >&2; exit 1; fi\n'
    'mv -f "$1" "$3" || { rm -f "$1"; exit 1; }\n')
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def put_command(remote: str, sha256: str) -> list[str]:
    """The argument vector that stores its stdin as `remote`, checked against `sha256`, complete or not at all."""
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return ["sh", "-c", _PUT_SCRIPT, "sh", remote + PART_SUFFIX, sha256, remote]


def get_command(remote: str) -> list[str]:
    """The argument vector that writes `remote` to stdout."""
    return ["cat", "--", remote]
