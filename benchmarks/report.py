"""Shared by the benchmark scripts: rewrite one marked section of BENCHMARKS.md and leave the others alone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, text: str, *, after: str | None = None, path: Path = BENCHMARKS_MD) -> Path:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` with ``text``.

    A section that is not there yet goes right after section ``after`` (if given and
    present), else at the end. The file is re-read just before an atomic replace, so
    sections other scripts wrote meanwhile survive.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    anchor = f"<!-- {after}:end -->" if after else None
    if start in current and end in current:
        head, rest = current.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    elif anchor and anchor in current:
        head, rest = current.split(anchor, 1)
        new = head + anchor + "\n\n" + block + rest
    else:
        new = current.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path
