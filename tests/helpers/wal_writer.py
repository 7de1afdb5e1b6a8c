"""A WAL writer for crash tests: appends durable records forever, printing each acknowledged Lamport index."""

from __future__ import annotations

import random
import sys

from haios.wal import RecordType, Wal


def main() -> None:
    rng = random.Random(int(sys.argv[2]))
    with Wal.open(sys.argv[1], segment_size=int(sys.argv[3])) as wal:
        sys.stdout.write(f"ready {wal.last_lamport}\n")
        sys.stdout.flush()
        while True:
            durable = rng.random() < 0.7
            lamport = wal.append(
                RecordType.STEP, {"name": "x" * rng.randint(0, 2000), "outcome": rng.random()}, durable=durable
            )
            if durable:
                sys.stdout.write(f"{lamport}\n")
                sys.stdout.flush()


if __name__ == "__main__":
    main()
