"""The local transport: node roots are directories on this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError, IntegrityError, TransportError
from ..node.recover import dispatch
from ..untrusted import read_regular
from .base import Completed, Handler


class LocalExchange:
    """A conversation with a node whose root is a directory here: each request runs in this process."""

    def __init__(self, name: str, root: Path, handler: Handler) -> None:
        self.name = name
        self.root = root
        self.handler = handler

    def request(self, request: dict[str, Any]) -> dict[str, Any]:
        if not (self.root / "state.txt").exists():
            raise TransportError(f"{self.name}: no node root at {self.root}")
        try:
            return self.handler(self.root, request)
        except OSError as exc:
            raise TransportError(f"{self.name}: {exc.strerror or exc} ({self.root})") from exc

    def close(self) -> None:
        return None


class LocalTransport:
    def __init__(self, roots: Mapping[str, Path]) -> None:
        self.roots = dict(roots)

    def nodes(self) -> list[str]:
        return sorted(self.roots)

    def root(self, node: str) -> Path:
        try:
            return self.roots[node]
        except KeyError:
            raise TransportError(f"{node}: unknown node") from None

    def local_view(self, node: str) -> Path:
        return self.root(node)

    def read_file(self, node: str, relpath: str) -> bytes | None:
        root = self.root(node)
        try:
            return read_regular(root / relpath, "control", within=root)
        except InputError as exc:
            raise IntegrityError(exc.path, exc.reason) from exc

    def call(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        root = self.root(node)
        if not (root / "state.txt").exists():
            raise TransportError(f"{node}: no node root at {root}")
        return dispatch(root, request)

    def run(self, node: str, argv: list[str], *, timeout: float, env: dict[str, str] | None = None) -> Completed:
        root = self.root(node)
        if argv and argv[0] == "haios":
            # the node's haios is this haios: run it with this interpreter, whatever PATH says
            argv = [sys.executable, "-m", "haios", *argv[1:]]
        try:
            proc = subprocess.run(
                argv,
                cwd=root,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            return Completed(124, "", f"timed out after {timeout:g} s")
        except OSError as exc:
            return Completed(127, "", f"cannot run {argv[0]}: {exc.strerror}")
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    def exchange(
        self, node: str, *, command: list[str], handler: Handler, timeout: float | None = None
    ) -> LocalExchange:
        return LocalExchange(node, self.root(node), handler)
