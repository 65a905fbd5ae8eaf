"""Tags are stored as curators type them (`star_(symbol)`); only the kohya export writes prompt syntax."""

from __future__ import annotations

import json
import shutil

from sqlalchemy import select

from flows.ingest import ingest
from store.models import Member, Tag
from store.versions import commit_version, export_version


def test_plain_tags_are_escaped_only_in_kohya_captions(store, tmp_path, photos):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(photos / "MilkyWay_1080x1920.png", src / "sky.png")
    ingest(store, [src], "stars")
    with store.session() as session:
        member = session.scalar(select(Member))
        member.caption = "a night sky (long exposure)"
        for position, text in enumerate(["star_(symbol)", "night sky", "already \\(escaped\\)"]):
            session.add(Tag(member_id=member.id, text=text, source="human:ana", status="accepted", position=position))
    commit_version(store, "stars", "v1")
    export_version(store, "stars", 1, "kohya", tmp_path / "k")
    (txt,) = (tmp_path / "k").rglob("*.txt")
    assert txt.read_text() == "a night sky (long exposure), star_\\(symbol\\), night sky, already \\(escaped\\)\n"
    export_version(store, "stars", 1, "imagefolder", tmp_path / "i")
    row = json.loads((tmp_path / "i" / "metadata.jsonl").read_text())
    assert row["tags"] == ["star_(symbol)", "night sky", "already \\(escaped\\)"]
    assert row["text"] == "a night sky (long exposure), star_(symbol), night sky, already \\(escaped\\)"
