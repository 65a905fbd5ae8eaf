"""A curator's review day in Chromium: a walk over a snapshot that never skips, captions that are never
lost (conflicts keep both texts, unsaved edits are guarded), Cancel on the exclude prompt excludes nothing."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from store.models import Member, Tag
from tests.dashboards.browsing import logged_in, screenshot

pytestmark = pytest.mark.browser


def member(store, member_id: int) -> Member:
    with store.session() as session:
        return session.get(Member, member_id)


def test_keyboard_review_walk_visits_every_unreviewed_image_exactly_once(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits")
    page.click("text=Next unreviewed")
    page.wait_for_selector("#position")
    visited, positions = [], []
    while True:
        page.wait_for_selector("#tags li.tag")
        visited.append(page.locator("h1").inner_text().split()[0])
        positions.append(page.locator("#position").inner_text())
        if len(visited) == 3:
            screenshot(page, "review-walk-3-of-7")
        page.keyboard.press("v")  # reviewed: it leaves the "unreviewed" filter, the walk does not shift
        page.wait_for_function("() => document.getElementById('member-meta').textContent.includes('reviewed by cur1')")
        if page.locator("#next").count() == 0:
            break
        url = page.url
        page.keyboard.press("j")
        page.wait_for_url(lambda u, url=url: u != url)
    assert visited == sorted(ids, key=ids.get)  # every image, in the snapshot's order (date added, oldest first)
    assert positions == [f"{n} / 7" for n in range(1, 8)]
    with store.session() as session:
        assert session.scalar(select(Member.id).where(Member.reviewed_at.is_(None))) is None

    page.keyboard.press("k")  # previous is the image before, not the current one
    page.wait_for_url(re.compile(rf".*/m/{ids[visited[-2]]}\?review=.*"))
    assert page.locator("#position").inner_text() == "6 / 7"
    page.goto(base + "/d/portraits")  # the walk can be resumed where it was left
    assert page.locator("#resume-review").inner_text() == "Resume review (6 / 7)"
    page.click("text=Next unreviewed")  # nothing left to review: back to the (empty) unreviewed grid
    page.wait_for_url(re.compile(r".*/d/portraits\?unreviewed=1$"))
    assert page.locator("figure.cell").count() == 0


def test_review_session_from_the_grid_filter(browser, server):
    base, _, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits?tags_all=sky")
    screenshot(page, "grid-sky")
    page.click("#start-review button")
    page.wait_for_selector("#position")
    assert page.locator("#position").inner_text() == "1 / 4"
    screenshot(page, "image-view-review")


def test_caption_conflict_keeps_both_texts_until_the_curator_chooses(browser, server):
    base, store, ids = server
    fish = ids["HappyFish.jpg"]
    one = logged_in(browser, base, "cur1", f"/d/portraits/m/{fish}")
    two = logged_in(browser, base, "cur2", f"/d/portraits/m/{fish}")
    one.wait_for_selector("#tags li.tag")
    two.wait_for_selector("#tags li.tag")
    one.fill("#caption", "a goldfish in a bowl")
    one.click("#save-caption")
    one.wait_for_function("() => document.getElementById('member-meta').textContent.includes('caption_edit by cur1')")
    mine = ("a small orange fish swimming between green water plants in a home aquarium, "
            "seen from the side, soft sun")
    assert len(mine) == 104
    two.fill("#caption", mine)
    two.keyboard.press("Control+Enter")
    two.wait_for_selector("#caption-conflict:not([hidden])")
    screenshot(two, "caption-conflict")
    assert two.locator("#their-caption").inner_text() == "a goldfish in a bowl"
    assert two.locator("#caption").input_value() == mine  # the typed caption is still there
    assert "Not saved" in two.locator("#flash").inner_text()
    assert member(store, fish).caption == "a goldfish in a bowl"
    two.click("#keep-mine")
    two.wait_for_selector("#caption-conflict", state="hidden")
    assert member(store, fish).caption == mine


def test_unsaved_caption_is_guarded_on_j_and_x_cancel_excludes_nothing(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits")
    page.click(f'figure.cell[data-id="{ids["ellipses.jpg"]}"] a')
    page.wait_for_selector("#tags li.tag")
    page.keyboard.press("c")
    page.keyboard.type(" with a red border")
    page.keyboard.press("Escape")
    url = page.url
    page.keyboard.press("j")
    page.wait_for_selector("#flash.conflict")
    assert "Unsaved caption" in page.locator("#flash").inner_text()
    assert page.url == url and page.locator("#caption").input_value().endswith("with a red border")

    page.once("dialog", lambda dialog: dialog.dismiss())  # x, then Cancel on the reason prompt
    page.keyboard.press("x")
    page.wait_for_function("() => document.getElementById('flash').textContent.includes('Not excluded')")
    assert member(store, ids["ellipses.jpg"]).status == "active"
    page.once("dialog", lambda dialog: dialog.accept("out of focus"))
    page.keyboard.press("x")
    page.wait_for_function("() => document.getElementById('status-badge').textContent.includes('out of focus')")
    assert member(store, ids["ellipses.jpg"]).status == "excluded"

    page.keyboard.press("j")  # warned already: this j leaves, dropping the unsaved caption as asked
    page.wait_for_url(lambda u: u != url)
    assert member(store, ids["ellipses.jpg"]).caption == "a photo: ellipses.jpg"


def test_edits_of_different_tags_merge(browser, server):
    base, store, ids = server
    fish = ids["HappyFish.jpg"]
    one = logged_in(browser, base, "cur1", f"/d/portraits/m/{fish}")
    two = logged_in(browser, base, "cur2", f"/d/portraits/m/{fish}")
    one.wait_for_selector("#tags li.tag")
    two.wait_for_selector("#tags li.tag")
    one.keyboard.press("r")  # cur1 rejects "fish"
    one.wait_for_selector('#tags li.tag.rejected[data-text="fish"]')
    two.keyboard.press("ArrowDown")
    two.keyboard.press("a")  # cur2, on the older page, accepts "underwater": a different tag
    two.wait_for_selector('#tags li.tag.accepted[data-text="underwater"]')
    two.wait_for_selector('#tags li.tag.rejected[data-text="fish"]')  # cur1's change shown, not lost
    assert "Saved" in two.locator("#flash").inner_text()
    with store.session() as session:
        statuses = dict(session.execute(select(Tag.text, Tag.status).where(Tag.member_id == fish)).all())
    assert statuses["fish"] == "rejected" and statuses["underwater"] == "accepted"
