"""Versions are immutable manifests; exports are upright, deterministic and readable by trainers."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from sqlalchemy import select

from flows.ingest import ingest
from store.models import Member, Tag
from store.versions import NothingToCommit, commit_version, diff_versions, export_version, list_versions


@pytest.fixture
def dataset(store, tmp_path, photos):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("messi5.jpg", "HappyFish.jpg", "leuvenB.jpg"):
        shutil.copy(photos / name, src / name)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise when shown
    Image.open(photos / "ellipses.jpg").save(src / "sideways.jpg", exif=exif)
    (src / "messi5.txt").write_text("football, 1boy")
    ingest(store, [src], "subject")
    return "subject"


def test_commit_records_an_immutable_manifest(store, dataset):
    first = commit_version(store, dataset, "first cut", user="ana")
    assert first.number == 1 and first.entries == 4
    with pytest.raises(NothingToCommit):
        commit_version(store, dataset, "again")
    # a curator excludes one image and edits a caption: version 2; version 1 is unchanged
    with store.session() as session:
        fish = session.scalar(select(Member).where(Member.source_path == "HappyFish.jpg"))
        fish.status, fish.excluded_reason = "excluded", "blurry"
        messi = session.scalar(select(Member).where(Member.source_path == "messi5.jpg"))
        messi.caption = "a football player on grass"
        session.add(Tag(member_id=messi.id, text="grass", source="human:ana", status="accepted", position=2))
    second = commit_version(store, dataset, "curated", user="ana")
    assert second.number == 2 and second.entries == 3
    assert [v.entries for v in list_versions(store, dataset)] == [4, 3]
    change = diff_versions(store, dataset, 1, 2)
    assert [r["source_path"] for r in change["removed"]] == ["HappyFish.jpg"]
    assert change["added"] == []
    (messi_change,) = change["changed"]
    assert messi_change["caption"] == ["", "a football player on grass"]
    assert messi_change["tags_added"] == ["grass"] and messi_change["tags_removed"] == []


def test_kohya_export_is_upright_and_byte_identical_twice(store, dataset, tmp_path):
    with store.session() as session:
        from store.datasets import get_dataset

        ds = get_dataset(session, dataset)
        ds.identifier, ds.class_word, ds.repeats = "sks", "person", 10
    commit_version(store, dataset, "v1")
    a = export_version(store, dataset, 1, "kohya", tmp_path / "a")
    b = export_version(store, dataset, None, "kohya", tmp_path / "b")
    folder = tmp_path / "a" / "10_sks person"
    assert a["folder"] == "10_sks person" and folder.is_dir()
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    images = [p for p in folder.iterdir() if p.suffix != ".txt"]
    assert len(images) == 4 and all(p.with_suffix(".txt").exists() for p in images)
    (sideways,) = [p for p in images if "sideways" in p.name]
    with Image.open(sideways) as exported:
        assert exported.size == (533, 400)  # ellipses.jpg is 400×533; orientation 8 turns it
        assert not exported.getexif().get(0x0112)
    (messi_txt,) = [p for p in folder.glob("*messi5.txt")]
    assert messi_txt.read_text().strip() == "football, 1boy"
    with pytest.raises(FileExistsError):
        export_version(store, dataset, 1, "kohya", tmp_path / "a")


def test_kohya_export_gives_uncaptioned_members_the_trigger_words(store, dataset, tmp_path):
    """sd-scripts trains on a .txt as it stands: an empty one would train on '' instead of `sks person`."""
    from training.data import scan_kohya_folder, tag_frequency

    with store.session() as session:
        from store.datasets import get_dataset

        ds = get_dataset(session, dataset)
        ds.identifier, ds.class_word, ds.repeats = "sks", "person", 10
    commit_version(store, dataset, "v1")
    export_version(store, dataset, 1, "kohya", tmp_path / "k")
    folder = tmp_path / "k" / "10_sks person"
    texts = {p.name.split("_", 1)[1]: p.read_text() for p in folder.glob("*.txt")}
    assert texts == {"messi5.txt": "football, 1boy\n", "HappyFish.txt": "sks person\n",
                     "leuvenB.txt": "sks person\n", "sideways.txt": "sks person\n"}
    # what A1111's tag panel shows (ss_tag_frequency), counted from the exported files as a trainer reads them
    assert tag_frequency(scan_kohya_folder(tmp_path / "k")) == \
        {"10_sks person": {"football": 1, "1boy": 1, "sks person": 3}}



def test_exported_folder_is_readable_by_other_users(store, dataset, tmp_path):
    """A trainer running as another user reads the export (tempfile.mkdtemp alone leaves it 0700)."""
    commit_version(store, dataset, "v1")
    export_version(store, dataset, 1, "kohya", tmp_path / "k")
    items = [tmp_path / "k", *(tmp_path / "k").rglob("*")]
    assert {oct(p.stat().st_mode & 0o777) for p in items if p.is_dir()} == {"0o755"}
    assert {oct(p.stat().st_mode & 0o777) for p in items if p.is_file()} == {"0o644"}


def test_imagefolder_export_writes_metadata_jsonl(store, dataset, tmp_path):
    commit_version(store, dataset, "v1")
    export_version(store, dataset, 1, "imagefolder", tmp_path / "hf")
    lines = [json.loads(line) for line in (tmp_path / "hf" / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 4
    for line in lines:
        assert (tmp_path / "hf" / line["file_name"]).exists()
    (messi,) = [line for line in lines if "messi5" in line["file_name"]]
    assert messi["tags"] == ["football", "1boy"] and messi["text"] == "football, 1boy"
