"""Model runs write tags, captions and scores beside a curator's work, never over it (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from preprocess.steps import TagSuggestion
from store.models import Caption, Dataset, Image, Member, Score, Tag
from store.tags import apply_caption, apply_model_tags, apply_scores
from tests.tiny_models.fixtures import registry, tiny_wd14  # noqa: F401

WD14 = "model:wd14-vit-v2"


def _member(store) -> int:
    with store.session() as session:
        dataset = Dataset(name="portraits")
        image = Image(sha256="a" * 64, phash="0" * 16, width=548, height=342, format="JPEG", ext="jpg",
                      byte_size=1000, mode="RGB")
        session.add_all([dataset, image])
        session.flush()
        member = Member(dataset_id=dataset.id, image_id=image.id, source_path="messi5.jpg")
        session.add(member)
        session.flush()
        return member.id


def _tags(store, member_id) -> dict[str, Tag]:
    with store.session() as session:
        return {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == member_id))}


def test_curator_edits_survive_a_re_tag(store):
    member_id = _member(store)
    first = [TagSuggestion("1boy", 0.9), TagSuggestion("soccer ball", 0.7), TagSuggestion("grass", 0.5),
             TagSuggestion("outdoors", 0.4), TagSuggestion("general", 0.8, "rating")]
    with store.session() as session:
        assert apply_model_tags(session, member_id, WD14, first) == {"added": 5, "updated": 0, "removed": 0, "protected": 0}

    # the curator accepts one, rejects one, and adds their own
    with store.session() as session:
        tags = {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == member_id))}
        tags["soccer ball"].status, tags["soccer ball"].updated_by = "accepted", "ana"
        tags["grass"].status = "rejected"
        session.add(Tag(member_id=member_id, text="lionel messi", source="human:ana", status="accepted", position=0))

    # a later run (other threshold) no longer sees "soccer ball" or "outdoors", lowers "grass", adds "sky"
    second = [TagSuggestion("1boy", 0.95), TagSuggestion("grass", 0.2), TagSuggestion("sky", 0.6),
              TagSuggestion("lionel messi", 0.3)]
    with store.session() as session:
        counts = apply_model_tags(session, member_id, WD14, second)
    assert counts == {"added": 1, "updated": 1, "removed": 2, "protected": 2}

    tags = _tags(store, member_id)
    assert set(tags) == {"1boy", "soccer ball", "grass", "sky", "lionel messi"}  # outdoors + rating were stale
    assert (tags["soccer ball"].status, tags["soccer ball"].confidence, tags["soccer ball"].updated_by) == ("accepted", 0.7, "ana")
    assert (tags["grass"].status, tags["grass"].confidence) == ("rejected", 0.5)
    assert (tags["lionel messi"].source, tags["lionel messi"].confidence) == ("human:ana", None)
    assert (tags["1boy"].confidence, tags["1boy"].position) == (0.95, 0)
    assert (tags["sky"].status, tags["sky"].source, tags["sky"].position) == ("suggested", WD14, 2)


def test_another_models_suggestions_are_not_removed(store):
    member_id = _member(store)
    with store.session() as session:
        apply_model_tags(session, member_id, "model:deepdanbooru-v3", [TagSuggestion("solo", 0.6), TagSuggestion("hat", 0.9)])
        apply_model_tags(session, member_id, WD14, [TagSuggestion("solo", 0.8)])
        apply_model_tags(session, member_id, WD14, [TagSuggestion("smile", 0.5)])
    tags = _tags(store, member_id)
    # "solo" went to the more confident WD14 run, then WD14 dropped it; deepdanbooru's "hat" stays
    assert {t: tags[t].source for t in tags} == {"hat": "model:deepdanbooru-v3", "smile": WD14}


def test_a_model_cannot_write_as_a_person(store):
    member_id = _member(store)
    with store.session() as session, pytest.raises(ValueError, match="human:ana"):
        apply_model_tags(session, member_id, "human:ana", [TagSuggestion("x", 1.0)])


def test_captioner_sets_the_caption_until_a_person_chooses_one(store):
    member_id = _member(store)
    with store.session() as session:
        assert apply_caption(session, member_id, "a man kicking a ball", "model:blip-base") is True
        assert apply_caption(session, member_id, "a man kicking a ball", "model:blip-base") is False
    with store.session() as session:
        member = session.get(Member, member_id)
        assert (member.caption, member.caption_source, member.revision) == ("a man kicking a ball", "model:blip-base", 2)
        member.caption, member.caption_source = "messi dribbling", "human:ana"
    with store.session() as session:
        assert apply_caption(session, member_id, "a soccer player", "model:blip-base") is False
        assert apply_caption(session, member_id, "a football match", "model:blip-large") is False
    with store.session() as session:
        member = session.get(Member, member_id)
        assert (member.caption, member.caption_source) == ("messi dribbling", "human:ana")
        captions = {c.source: c.text for c in session.scalars(select(Caption).where(Caption.member_id == member_id))}
    assert captions == {"model:blip-base": "a soccer player", "model:blip-large": "a football match"}


def test_sidecar_caption_is_kept(store):
    member_id = _member(store)
    with store.session() as session:
        member = session.get(Member, member_id)
        member.caption, member.caption_source = "from the .txt", "sidecar"
    with store.session() as session:
        assert apply_caption(session, member_id, "a man", "model:blip-base") is False
        assert session.get(Member, member_id).caption == "from the .txt"


def test_scores_are_one_value_per_name_newest_wins(store):
    member_id = _member(store)
    with store.session() as session:
        apply_scores(session, member_id, {"sharpness": 786.7, "exposure": 0.33}, "quality:opencv", "a" * 64)
        apply_scores(session, member_id, {"sharpness": 3.4}, "quality:opencv", "b" * 64)
        apply_scores(session, member_id, {"aesthetic": 5.2}, "model:laion-aesthetic-v2", "b" * 64)
    with store.session() as session:
        rows = {s.name: (s.value, s.artifact_sha256) for s in session.scalars(select(Score).where(Score.member_id == member_id))}
        with pytest.raises(ValueError, match="NaN"):
            apply_scores(session, member_id, {"noise": float("nan")}, "quality:opencv")
    assert rows == {"sharpness": (3.4, "b" * 64), "exposure": (0.33, "a" * 64), "aesthetic": (5.2, "b" * 64)}


def test_unknown_member_is_a_clear_error(store):
    with store.session() as session, pytest.raises(ValueError, match="member 999 does not exist"):
        apply_scores(session, 999, {"sharpness": 1.0}, "quality:opencv")


def test_re_tagging_a_real_photo_keeps_the_curators_decisions(store, registry, tiny_wd14, photos):  # noqa: F811
    from preprocess.load import load_image_file
    from preprocess.steps import Item, load_step

    member_id = _member(store)
    item = Item(load_image_file(photos / "messi5.jpg").image, name="messi5.jpg")
    first = load_step("tag", {"model": str(tiny_wd14), "general_threshold": 0.25}, registry).run([item])[0].tags
    with store.session() as session:
        apply_model_tags(session, member_id, WD14, first)
        tags = {t.text: t for t in session.scalars(select(Tag).where(Tag.member_id == member_id))}
        assert tags["outdoors"].confidence == pytest.approx(0.27, abs=1e-3)  # a weak tag the curator wants
        tags["1girl"].status = "rejected"
        tags["outdoors"].status = "accepted"
    # a stricter re-run drops "outdoors" and "long hair" and still suggests "1girl"
    second = load_step("tag", {"model": str(tiny_wd14), "general_threshold": 0.5}, registry).run([item])[0].tags
    assert {"outdoors", "long hair"}.isdisjoint(t.text for t in second) and "1girl" in {t.text for t in second}
    with store.session() as session:
        counts = apply_model_tags(session, member_id, WD14, second)
    tags = _tags(store, member_id)
    assert tags["1girl"].status == "rejected" and tags["outdoors"].status == "accepted"
    assert "long hair" not in tags and counts["removed"] >= 1 and counts["protected"] == 1
