"""A control-file writer for crash tests: rewrites one file forever, printing each acknowledged version.

The body of version v is a pure function of v (see ``body_for``), so a reader can tell a clean old or
new file from a mix of two.
"""

from __future__ import annotations

import sys

from haios import controlfile


def body_for(version: int) -> bytes:
    return f"version: {version}\npad: '{'x' * ((version * 7919) % 20000)}'\n".encode()


def main() -> None:
    path = sys.argv[1]
    version = controlfile.current_version(path)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        next_version = 1 if version is None else version + 1
        version = controlfile.write(path, body_for(next_version), expected_version=version)
        sys.stdout.write(f"{version}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
