"""What a phase's command calls per sub-step — ``haios node step``, ``side-effect`` and ``intent`` —
and the fast path that runs them without the command line.

A long phase calls these once per sub-step, hundreds of times a run, so each call's start-up is the
phase's overhead. :func:`fast_step` recognises a well-formed call of exactly these commands (the
words a phase's command writes: no global options, every option known, given once, with its value)
and :func:`run_fast` runs it with the node's modules only — no typer, no pydantic. Anything else (a
``--help``, a typo, a missing argument, an option given twice, a value the command line would refuse)
is not recognised and goes through the command line, which words its help and its errors; the
commands there call the same functions below, so both ways log the same records and print the same
line.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ._serve import plug_replication

if TYPE_CHECKING:
    from ..node.transaction import PhaseTx

COMMANDS = ("step", "side-effect", "intent")
DEFAULT_OUTCOME = '"ok"'
DEFAULT_PARAMS = "{}"
DEFAULT_COST = '{"amount": 0, "currency": "EUR"}'

# each command's options that take a value, its flags, and the names of its positional arguments
_COMMON = ("--g", "--phase")
_OPTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "step": ((*_COMMON, "--outcome"), (), ("root", "name")),
    "side-effect": ((*_COMMON, "--key", "--kind", "--params", "--compensator", "--cost", "--done"), (), ("root",)),
    "intent": ((*_COMMON, "--content-file"), ("--delete",), ("root", "path")),
}
_REQUIRED = {"step": _COMMON, "side-effect": (*_COMMON, "--key"), "intent": _COMMON}


def json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what} is not valid JSON: {exc}") from exc


def _open_phase(root: Path, g: int, phase: str) -> PhaseTx:
    """The node's open (g, phase), with WAL replication plugged in (a durable record ships to the
    node's replica peers before it counts)."""
    from ..node import Node

    plug_replication()
    return Node(root).resume(g, phase)


def log_step(root: Path, g: int, phase: str, name: str, outcome: str = DEFAULT_OUTCOME) -> dict[str, Any]:
    """Record a completed sub-step; the line the command prints."""
    with _open_phase(root, g, phase) as tx:
        tx.step(name, json_arg(outcome, "--outcome"))
        steps = tx.completed_steps
    return {"g": g, "phase": phase, "steps": steps}


def log_side_effect(
    root: Path,
    g: int,
    phase: str,
    key: str,
    *,
    kind: str | None = None,
    params: str = DEFAULT_PARAMS,
    compensator: str | None = None,
    cost: str = DEFAULT_COST,
    done: str | None = None,
) -> dict[str, Any]:
    """Log an external call before it is made (or, with ``done``, that it returned)."""
    with _open_phase(root, g, phase) as tx:
        if done is not None:
            tx.side_effect_done(key, json_arg(done, "--done"))
        else:
            if kind is None or compensator is None:
                raise UsageError("--kind and --compensator are required unless --done is given")
            tx.side_effect(key, kind, json_arg(params, "--params"), compensator, json_arg(cost, "--cost"))
    return {"g": g, "phase": phase, "key": key, "logged": "SIDE_EFFECT_DONE" if done is not None else "SIDE_EFFECT"}


def log_intent(
    root: Path, g: int, phase: str, path: str, *, content_file: Path | None = None, delete: bool = False
) -> dict[str, Any]:
    """Log a change to a data/ file (applied at prepare): new content from ``content_file`` ('-':
    stdin), or a deletion."""
    if delete == (content_file is not None):
        raise UsageError("give exactly one of --content-file and --delete")
    content = None
    if content_file is not None:
        try:
            content = sys.stdin.buffer.read() if str(content_file) == "-" else content_file.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --content-file {content_file}: {exc.strerror or exc}") from exc
    with _open_phase(root, g, phase) as tx:
        seq = tx.intent(path, content)
    return {"g": g, "phase": phase, "seq": seq, "path": path, "op": "delete" if delete else "write"}


@dataclass(frozen=True)
class StepCall:
    """A recognised call: the command and its arguments, as the command line would have parsed them."""

    command: str
    positional: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()


def fast_step(argv: list[str]) -> StepCall | None:
    """The call ``argv`` makes when it is exactly ``node step|side-effect|intent ...`` with known
    options each given once and every value one the command line accepts; otherwise None."""
    if len(argv) < 2 or argv[0] != "node" or argv[1] not in COMMANDS:
        return None
    command = argv[1]
    valued, flag_names, positional_names = _OPTIONS[command]
    options: dict[str, str] = {}
    flags: set[str] = set()
    positional: list[str] = []
    words = iter(argv[2:])
    for word in words:
        if word.startswith("-") and word != "-":
            name, eq, value = word.partition("=")
            if name in flag_names and not eq and name not in flags:
                flags.add(name)
                continue
            if name not in valued or name in options:
                return None  # help, a typo, a repeat, a "--": the command line says what it makes of it
            if not eq:
                value = next(words, "")
                if not value or (value.startswith("-") and value != "-"):
                    return None
            options[name] = value
        else:
            positional.append(word)
    if len(positional) != len(positional_names) or any(name not in options for name in _REQUIRED[command]):
        return None
    try:
        if int(options["--g"]) < 0:
            return None
    except ValueError:
        return None
    if not Path(positional[0]).is_dir():  # the command line names a missing root in its own words
        return None
    return StepCall(command, tuple(positional), options, frozenset(flags))


def _call(call: StepCall) -> dict[str, Any]:
    o = call.options
    root, g, phase = Path(call.positional[0]), int(o["--g"]), o["--phase"]
    if call.command == "step":
        return log_step(root, g, phase, call.positional[1], o.get("--outcome", DEFAULT_OUTCOME))
    if call.command == "side-effect":
        return log_side_effect(
            root,
            g,
            phase,
            o["--key"],
            kind=o.get("--kind"),
            params=o.get("--params", DEFAULT_PARAMS),
            compensator=o.get("--compensator"),
            cost=o.get("--cost", DEFAULT_COST),
            done=o.get("--done"),
        )
    content_file = o.get("--content-file")
    return log_intent(
        root,
        g,
        phase,
        call.positional[1],
        content_file=None if content_file is None else Path(content_file),
        delete="--delete" in call.flags,
    )


def run_fast(call: StepCall) -> int:
    """Run a recognised call: its line on stdout, or its error the way the command line reports it."""
    from . import _render
    from ._errors import handle

    # library warnings (a torn WAL tail repaired on the way) reach stderr as one 'haios:' line
    logging.basicConfig(level=logging.WARNING, format="haios: %(message)s")
    try:
        line = _call(call)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - the central handler words every failure
        return handle(exc, debug=False, command=f"haios node {call.command}")
    _render.emit_ndjson(line)
    return 0
