"""Sorting the grid by a score: scored members in score order, then the unscored, across pages."""

from __future__ import annotations

import pytest

from store.models import Dataset, Image, Member, Score
from store.queries import GridFilter, grid_page, neighbour


@pytest.fixture
def scored(store):
    """10 members; members 0–5 have an aesthetic score (with a tie), 6–9 have none."""
    values = [5.0, 7.5, 3.2, 7.5, 9.1, 1.0]
    with store.session() as session:
        dataset = Dataset(name="sorted", repeats=1)
        session.add(dataset)
        session.flush()
        ids = []
        for i in range(10):
            image = Image(sha256=f"{i:064x}", phash="0" * 16, width=64, height=64, format="PNG", ext="png",
                          byte_size=1, mode="RGB")
            session.add(image)
            session.flush()
            member = Member(dataset_id=dataset.id, image_id=image.id, source_path=f"{i}.png")
            session.add(member)
            session.flush()
            ids.append(member.id)
            if i < len(values):
                session.add(Score(member_id=member.id, name="aesthetic", value=values[i], source="model:x"))
        return dataset.id, ids


def _walk(store, dataset_id, descending: bool) -> list[int]:
    order = []
    for page in (1, 2, 3, 4):
        f = GridFilter(sort="score:aesthetic", descending=descending, page=page, per_page=3)
        with store.session() as session:
            order += [item["id"] for item in grid_page(session, dataset_id, f)["items"]]
    return order


def test_score_sort_pages_through_scored_then_unscored(store, scored):
    dataset_id, ids = scored
    # 9.1, 7.5 (tie: higher id first), 7.5, 5.0, 3.2, 1.0, then unscored newest first
    assert _walk(store, dataset_id, True) == [ids[4], ids[3], ids[1], ids[0], ids[2], ids[5],
                                              ids[9], ids[8], ids[7], ids[6]]
    assert _walk(store, dataset_id, False) == [ids[5], ids[2], ids[0], ids[1], ids[3], ids[4],
                                               ids[6], ids[7], ids[8], ids[9]]
    f = GridFilter(sort="score:aesthetic")
    with store.session() as session:
        assert neighbour(session, dataset_id, f, 0) == ids[4]
        assert neighbour(session, dataset_id, f, 7) == ids[8]
        assert neighbour(session, dataset_id, f, 10) is None
