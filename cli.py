"""The `clasp` command: thin click wrappers, one library function each.

Heavy imports (torch, transformers, h5py) happen inside the commands so that
`clasp --help` answers at once. User errors exit with code 2 and one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from clasp import __version__


class UserError(click.ClickException):
    """A problem with the user's input: one line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


def fail(message: str) -> "UserError":
    return UserError(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="clasp")
def main() -> None:
    """CLASP: pre-train human-centric vision backbones from unlabeled person images.

    \b
    Pipeline:
      clasp label     images/  -> shards/   CLIP pseudo-labels (part masks, attributes)
      clasp pretrain  shards/  -> run/      ViT + prompt-controlled MoE, self-distillation
      clasp export    run/     -> backbone/ safetensors + config for one task prompt
    """


# --------------------------------------------------------------------------- store


@main.command()
@click.argument("shards", type=click.Path(path_type=Path))
def verify(shards: Path) -> None:
    """Check every shard of SHARDS against its manifest (schema, sha256, rows).

    \b
    Exit 0: every listed shard is good.
    Exit 1: one line per bad shard (or a manifest that cannot be accepted).
    Exit 2: SHARDS is missing, not a folder, or has no manifest.json.
    """
    from clasp.store import NotAStoreError, verify_store

    try:
        report = verify_store(shards)
    except NotAStoreError as exc:
        raise UserError(str(exc)) from None
    for p in report.problems:
        click.echo(f"BAD {p.path}: {p.problem}")
    for path in report.unlisted:
        click.echo(f"note: {path} is not listed in the manifest (ignored by readers)", err=True)
    if report.ok:
        click.echo(f"ok: {report.shards_checked} shards, {report.rows} rows in {shards}")
    else:
        click.echo(f"{len(report.problems)} of {max(report.shards_checked, 1)} shards bad in {shards}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
