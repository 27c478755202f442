"""Shared by the benchmark scripts: rewrite one marked section of BENCHMARKS.md and leave the others alone; run a
measurement once and keep its result, so an interrupted benchmark continues where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


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


def recorded(folder: str, key: str, fn: Any, *args: Any) -> dict:
    """Run ``fn(*args)`` (in a worker), or return its recorded result: each finished measurement is kept as
    ``folder/key.json`` (with the date and commit it was measured at), so an interrupted invocation re-run with the
    same options continues where it stopped instead of starting over."""
    import torch

    path = Path(folder) / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    result = fn(*args)
    result["measured"] = {"date": str(date.today()), "commit": commit()}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, path)
    return result


def commit() -> str:
    """The checkout's short commit hash ("unknown" outside git)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
