"""``haios validate``."""

from __future__ import annotations

import typer

from ..config import validate_repo
from . import _render
from ._options import Output, OutputOpt, RepoOpt, resolve


def validate(ctx: typer.Context, repo: RepoOpt = None, output: OutputOpt = None) -> int:
    """Check every file of the desired-state repo; report all problems as FILE:LINE:COL: KEY: MESSAGE.

    Exit 0 when the repo is valid, 1 when it is not.
    """
    opts = resolve(ctx, repo=repo, output=output)
    report = validate_repo(opts.repo)
    if opts.output is not Output.text:
        _render.emit_json(
            {
                "repo": str(opts.repo),
                "valid": report.ok,
                "files": report.files,
                "problems": [p.as_dict() for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            _render.out(str(problem))
        if report.ok:
            _render.out(f"{opts.repo}: valid ({len(report.files)} files)")
        else:
            count = len(report.problems)
            files = len({p.file for p in report.problems})
            _render.info(f"{count} problem{'s' if count != 1 else ''} in {files} file{'s' if files != 1 else ''}")
    return 0 if report.ok else 1
