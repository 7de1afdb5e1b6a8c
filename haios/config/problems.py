"""A validation problem: where it is (file, line, column, key path) and what is wrong."""

from __future__ import annotations

KeyPath = tuple[str | int, ...]


def format_key_path(path: KeyPath) -> str:
    """``('nodes', 0, 'name')`` → ``nodes[0].name``; the empty path is ``(root)``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(root)"
