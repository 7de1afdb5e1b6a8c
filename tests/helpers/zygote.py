"""A process that imports a crash-test writer once and forks a fresh writer for every trial.

    python zygote.py MODULE          # MODULE has main(), which reads sys.argv like a script

Each line on stdin is a JSON list of arguments. The zygote forks; the child runs ``MODULE.main()``
with ``sys.argv = [MODULE, *arguments]``, writing to the zygote's stdout (its first line is its own
``ready ...``); the test SIGKILLs the child by the pid it reads from ``pid N``, the zygote waits for
it and prints ``done STATUS``. Every writer is still a real process killed at a random moment, but a
trial costs a fork instead of an interpreter start and the writer's imports.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from types import TracebackType


class Zygote:
    """The test's side: ``start`` a writer, SIGKILL the pid it returns, then ``finish``."""

    def __init__(self, module: str, env: Mapping[str, str]) -> None:
        from helpers import subprocs

        self.proc = subprocs.spawn(
            [sys.executable, __file__, module],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=dict(env),
            text=True,
        )

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the zygote ended (exit {self.proc.wait()})"
        return line.rstrip("\n")

    def start(self, *args: str) -> tuple[int, list[str]]:
        """Fork a writer; returns its pid and what it wrote so far (its ``ready`` line first)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(args) + "\n")
        self.proc.stdin.flush()
        pid, lines = 0, []
        while not pid or not lines:
            line = self._line()
            if line.startswith("pid "):
                pid = int(line.split()[1])
            else:
                lines.append(line)
        return pid, lines

    def finish(self) -> list[str]:
        """What the (killed) writer wrote after ``start`` returned, once the zygote has reaped it."""
        lines = []
        while not (line := self._line()).startswith("done "):
            lines.append(line)
        return lines

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self.proc.kill()
        self.proc.wait()


def main() -> None:
    name = sys.argv[1]
    module = importlib.import_module(name)
    out = sys.stdout
    for line in sys.stdin:
        args = json.loads(line)
        out.flush()
        pid = os.fork()
        if pid == 0:
            try:
                sys.argv = [name, *map(str, args)]
                module.main()
            finally:
                sys.stdout.flush()
                os._exit(0)
        out.write(f"pid {pid}\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(f"done {status}\n")
        out.flush()


if __name__ == "__main__":
    main()
