"""`onnxgate clean [DIR ...]`: remove the staging a killed onnxgate left behind.

Every onnxgate run already sweeps the folder it writes into and ``$TMPDIR`` before it stages anything there
(``fsutil.sweep``); this command does the same on demand — for folders no later run will write into, or to
reclaim disk space now — and says what it found. Only staging whose owner process is gone is removed; a
running onnxgate's staging, another machine's and another user's are left alone.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from .common import console, finish


def clean(
    folders: list[Path] = typer.Argument(None, metavar="[DIR]...", help="Folders to sweep (where outputs were "
                                         "written); $TMPDIR and onnxgate's venv cache are always swept."),
    legacy: bool = typer.Option(False, "--legacy", help="Also remove leftovers of onnxgate versions that did not "
                                "tag staging with its owner (.NAME.HEX.tmp, onnxgate-* in $TMPDIR) once "
                                "unmodified for an hour."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Sweep every folder below each DIR too "
                                   "(links are not followed)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Remove staging files and folders left by onnxgate processes that were killed (kill -9, power loss)."""
    from ..errors import BadInputError
    from ..fsutil import sweep

    for folder in folders or []:
        if not folder.is_dir():
            raise BadInputError(f"'{folder}' is not a folder.", hint="Pass folders that onnxgate wrote outputs into.")
    swept = _targets(list(folders or []), recursive)
    entries = [entry for folder in swept for entry in sweep(folder, legacy=legacy)]
    by_action = {action: [e for e in entries if e.action == action]
                 for action in ("removed", "restored", "kept", "failed")}
    freed = sum(e.bytes for e in by_action["removed"])
    if json_out:
        return finish(json_out=True, data={"folders": [str(f) for f in swept], "bytes_freed": freed,
                                           **{action: [e.to_dict() for e in found] for action, found in by_action.items()}})
    if entries:
        console.print(_table(entries))
    summary = (f"removed {len(by_action['removed'])} leftover(s) ({freed / 1e6:.1f} MB)"
               + (f", restored {len(by_action['restored'])}" if by_action["restored"] else "")
               + (f", kept {len(by_action['kept'])}" if by_action["kept"] else "")
               + (f", [red]{len(by_action['failed'])} could not be removed[/]" if by_action["failed"] else "")
               + f" in {len(swept)} folder(s)")
    console.print(summary)


def _targets(folders: list[Path], recursive: bool) -> list[Path]:
    """The folders to sweep, each once: the given ones (and below, with ``recursive``), $TMPDIR, the venv cache."""
    from ..bundle.matrix import cache_root
    from ..fsutil import STAGING_PREFIX

    found: list[Path] = []
    for folder in folders:
        found.append(folder)
        if recursive:
            for root, dirs, _files in os.walk(folder):  # does not follow links
                dirs[:] = sorted(d for d in dirs if not d.startswith(STAGING_PREFIX))  # never into staging
                found += [Path(root, d) for d in dirs]
    found += [Path(tempfile.gettempdir()), cache_root()]
    unique, seen = [], set()
    for folder in found:
        key = folder.resolve()
        if key not in seen and folder.is_dir():
            seen.add(key)
            unique.append(folder)
    return unique


def _table(entries: list) -> Table:
    table = Table(title="onnxgate staging", title_justify="left")
    for column in ("path", "owner", "action", "why", "size"):
        table.add_column(column, overflow="fold")
    styles = {"removed": "green", "restored": "cyan", "kept": "dim", "failed": "red"}
    for e in entries:
        table.add_row(escape(e.path), str(e.pid or "-"), f"[{styles[e.action]}]{e.action}[/]", escape(e.reason),
                      f"{e.bytes / 1e6:.1f} MB" if e.bytes else "-")
    return table


def register(app: typer.Typer) -> None:
    app.command("clean")(clean)
