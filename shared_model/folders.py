"""Walking a folder of files the way users lay datasets out: recursively, following symbolic links.

A dataset is often assembled from links (class folders linked from where the
images live, a split linked into place), so links to folders are followed. A
link that leads back to a folder it sits in would make the walk endless; it is
refused with an error naming the link, rather than skipped, because a dataset
that silently loses a branch gives wrong counts. Two links to the same folder
from different places are not a loop: that folder is walked under each path.
NumPy-free and torch-free: the edge and training both use it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Collection

__all__ = ["FolderError", "FolderLoopError", "walk_files"]


class FolderError(ValueError):
    """A folder that cannot be walked; the message names it and says why."""


class FolderLoopError(FolderError):
    """A symbolic link that leads back to a folder that contains it."""


def walk_files(root: str | Path, suffixes: Collection[str]) -> list[Path]:
    """Every entry under ``root`` whose suffix (any case) is in ``suffixes`` and that is not a folder, sorted.

    Links to folders are followed; a link into one of its own ancestors raises
    :class:`FolderLoopError`, a folder that cannot be listed :class:`FolderError`. An entry named like a file that cannot be opened
    (a broken link, a link to a device) is listed anyway, so that the caller
    can report it instead of losing it.
    """
    root = Path(root)
    wanted = {s.lower() for s in suffixes}
    found: list[Path] = []
    _walk(root, wanted, (_identity(root),), found)
    return sorted(found)


def _identity(folder: Path) -> tuple[int, int]:
    """The (device, inode) pair of a folder, the same however a link reaches it."""
    status = os.stat(folder)
    return status.st_dev, status.st_ino


def _walk(folder: Path, wanted: set[str], ancestors: tuple[tuple[int, int], ...], found: list[Path]) -> None:
    try:
        with os.scandir(folder) as entries:
            children = sorted(entries, key=lambda e: e.name)
    except OSError as error:
        raise FolderError(f"cannot list the folder {folder}: {error.strerror or error}") from error
    for entry in children:
        path = Path(entry.path)
        if _is_folder(entry):
            identity = _identity(path)
            if identity in ancestors:
                raise FolderLoopError(f"{path} is a link to {os.path.realpath(path)}, a folder that contains it: the walk would never end; remove the link or point it elsewhere")
            _walk(path, wanted, (*ancestors, identity), found)
        elif path.suffix.lower() in wanted:
            found.append(path)


def _is_folder(entry: os.DirEntry[str]) -> bool:
    """Is ``entry`` a folder, directly or through links (False for a broken or unreadable link)?"""
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:
        return False
