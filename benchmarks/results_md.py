"""benchmarks/RESULTS.md, written section by section: each benchmark's ``--write`` replaces its own section (from
its heading, the text's first line, to the next top-level heading) and leaves the others' as they are."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(text: str, path: Path = RESULTS) -> None:
    """Drop the section headed by ``text``'s first line, if there is one, and append ``text`` at the end."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    heading = text.split("\n", 1)[0]
    if heading in old:
        start = old.index(heading)
        end = old.find("\n# ", start + len(heading))
        old = old[:start] + old[end + 1:] if end != -1 else old[:start]
    path.write_text(old.rstrip("\n") + "\n\n" + text, encoding="utf-8")
