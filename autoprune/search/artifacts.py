"""Where strategies keep what does not fit in a trial's attributes (weights, an agent's state): an Optuna
artifact store next to the study's file."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound

from .ledger import storage_file


def artifact_store(study: optuna.Study, directory: str | None = None) -> FileSystemArtifactStore:
    """The study's artifact store: next to a SQLite or journal file (``NAME.artifacts``), else
    ./autoprune-artifacts (or ``directory``).

    With workers on several machines, ``directory`` must be a folder they all share.
    """
    return FileSystemArtifactStore(str(artifact_dir(study, directory)))


def artifact_dir(study: optuna.Study, directory: str | None = None) -> Path:
    """The folder of the study's artifact store (see :func:`artifact_store`), created if need be."""
    if directory is None:
        path = storage_file(study._storage)
        directory = str(path.with_suffix(".artifacts")) if path else str(Path.cwd() / "autoprune-artifacts")
    Path(directory).mkdir(parents=True, exist_ok=True)
    return Path(directory)


def save_state(store: FileSystemArtifactStore, artifact_id: str, state: Any) -> None:
    """Write ``state`` (tensors, numbers, lists and dicts of them) as artifact ``artifact_id``."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    store.write(artifact_id, buffer)


def load_state(store: FileSystemArtifactStore, artifact_id: str) -> Any | None:
    """The state saved as ``artifact_id``, or None if it is gone (another worker removed an old one)."""
    try:
        with store.open_reader(artifact_id) as f:
            return torch.load(io.BytesIO(f.read()), weights_only=True)
    except ArtifactNotFound:
        return None


def remove(store: FileSystemArtifactStore, artifact_id: str) -> None:
    try:
        store.remove(artifact_id)
    except ArtifactNotFound:
        pass
