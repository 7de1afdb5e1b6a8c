"""Every command has help text and is documented in docs/cli.md, which is current."""

from __future__ import annotations

from pathlib import Path

import typer.main

from haios.cli import app
from haios.cli._docs import render, walk

DOCS = Path(__file__).parent.parent.parent / "docs"


def test_docs_cli_md_is_current() -> None:
    assert (DOCS / "cli.md").read_text() == render(), "docs/cli.md is stale: run 'make docs'"


def test_docs_every_command_has_help_and_a_section() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = list(walk(typer.main.get_command(app)))
    assert len(commands) >= 3
    for path, command in commands:
        assert (getattr(command, "help", None) or "").strip(), f"haios {' '.join(path)} has no help"
        assert f"## `{' '.join(('haios', *path))}`" in text
        for param in getattr(command, "params", []):
            if param.param_type_name == "option":
                assert param.help, f"option {param.opts} of haios {' '.join(path)} has no help"


def test_docs_config_md_names_every_schema_key() -> None:
    import json

    text = (DOCS / "config.md").read_text()
    schemas = Path(__file__).parent.parent.parent / "schemas"
    missing = []

    def visit(schema: dict[str, object], prefix: str) -> None:
        props = schema.get("properties")
        if isinstance(props, dict):
            for key, sub in props.items():
                dotted = f"{prefix}{key}"
                if f"`{dotted}`" not in text:
                    missing.append(dotted)
                if isinstance(sub, dict):
                    visit(sub, f"{dotted}.")
                    items = sub.get("items")
                    if isinstance(items, dict):
                        visit(items, f"{dotted}[].")
                    extra = sub.get("additionalProperties")
                    if isinstance(extra, dict):
                        visit(extra, f"{dotted}.*.")

    for path in sorted(schemas.glob("*.schema.json")):
        if not path.name.startswith(("control-", "override-payload", "doctor-report", "event")):
            visit(json.loads(path.read_text()), "")
    assert not missing, f"docs/config.md does not describe: {missing}"
