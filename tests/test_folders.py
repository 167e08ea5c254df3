"""Folders laid out with symbolic links: followed by fer-edge run and by fer-train's dataset loading; loops refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_client.cli import main as edge_main
from shared_model.folders import FolderLoopError, walk_files

FACE = Path(__file__).parent / "data" / "faces" / "astronaut.png"


def _images(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FACE, folder / name)


def _linked_dataset(tmp_path: Path) -> Path:
    """A dataset whose class folders are links to where the images are (one of them nested there)."""
    _images(tmp_path / "store" / "smiles", "a.png", "b.png")
    _images(tmp_path / "store" / "frowns" / "batch1", "c.png")
    data = tmp_path / "data"
    data.mkdir()
    (data / "happy").symlink_to(tmp_path / "store" / "smiles", target_is_directory=True)
    (data / "sad").symlink_to(tmp_path / "store" / "frowns", target_is_directory=True)
    return data


def test_links_to_folders_are_followed(tmp_path: Path) -> None:
    data = _linked_dataset(tmp_path)
    found = [p.relative_to(data).as_posix() for p in walk_files(data, {".png"})]
    assert found == ["happy/a.png", "happy/b.png", "sad/batch1/c.png"]


def test_a_link_back_into_its_own_ancestor_is_refused_by_name(tmp_path: Path) -> None:
    data = _linked_dataset(tmp_path)
    loop = tmp_path / "store" / "smiles" / "again"
    loop.symlink_to(data, target_is_directory=True)  # data/happy -> smiles, and smiles/again -> data
    with pytest.raises(FolderLoopError) as refused:
        walk_files(data, {".png"})
    assert "again" in str(refused.value) and "contains it" in str(refused.value)


def test_two_links_to_one_folder_are_not_a_loop(tmp_path: Path) -> None:
    _images(tmp_path / "store", "a.png")
    (tmp_path / "data").mkdir()
    for name in ("first", "second"):
        (tmp_path / "data" / name).symlink_to(tmp_path / "store", target_is_directory=True)
    assert [p.relative_to(tmp_path / "data").as_posix() for p in walk_files(tmp_path / "data", {".png"})] == ["first/a.png", "second/a.png"]


def test_fer_edge_run_walks_linked_class_folders(tmp_path: Path, capsys) -> None:
    data = _linked_dataset(tmp_path)
    assert edge_main(["run", str(data), "--whole-image", "--json", "--no-progress", "--threads", "1"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["source"]).relative_to(data).as_posix() for r in records] == ["happy/a.png", "happy/b.png", "sad/batch1/c.png"]
    assert all(r["error"] is None and r["label"] for r in records)


def test_fer_edge_run_refuses_a_folder_loop_clearly(tmp_path: Path, capsys) -> None:
    data = _linked_dataset(tmp_path)
    (tmp_path / "store" / "frowns" / "up").symlink_to(tmp_path / "store", target_is_directory=True)
    # data/sad -> store/frowns, store/frowns/up -> store, store/frowns again: a loop
    assert edge_main(["run", str(data), "--whole-image", "--json", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("fer-edge: error:") and "up" in error and "contains it" in error


def test_fer_train_datasets_follow_links_and_refuse_loops(tmp_path: Path) -> None:
    from shared_model.training.datasets import DatasetError, load_image_folder

    data = _linked_dataset(tmp_path)
    dataset = load_image_folder(data, progress=False)
    assert dataset.class_names == ("happy", "sad") and dataset.class_counts() == [2, 1]
    assert sorted(Path(s).name for s in dataset.sources) == ["a.png", "b.png", "c.png"]
    (tmp_path / "store" / "smiles" / "loop").symlink_to(tmp_path / "store" / "smiles", target_is_directory=True)
    with pytest.raises(DatasetError, match="contains it"):
        load_image_folder(data, progress=False)
