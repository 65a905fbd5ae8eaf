"""A curator in Chromium: log in, filter the grid, review tags with the keyboard, bulk-rename a tag,
commit a version, and see the conflict message when another curator edited first."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from store.models import DatasetVersion, Member, Tag
from tests.dashboards.browsing import logged_in

pytestmark = pytest.mark.browser

def tag_status(store, member_id: int, text: str) -> str | None:
    with store.session() as session:
        return session.scalar(select(Tag.status).where(Tag.member_id == member_id, Tag.text == text))


def test_log_in_and_filter_the_grid(browser, server):
    base, _, _ = server
    page = logged_in(browser, base, "viewer", "/d/portraits")
    assert page.locator("figure.cell").count() == 7
    page.fill('input[name="tags_all"]', "sky")
    page.fill('input[name="tags_none"]', "night")
    page.click("#apply-filter")
    page.wait_for_url(re.compile(r".*tags_all=sky.*"))
    assert page.locator("#total").inner_text() == "3"
    assert sorted(page.locator("figure.cell .path").all_inner_texts()) == [
        "Elarun_2560x1600.png", "FlyingKonqui_2560x1600.png", "leuvenB.jpg"]
    page.select_option('select[name="face"]', "yes")
    page.fill('input[name="tags_all"]', "")
    page.fill('input[name="tags_none"]', "")
    page.click("#apply-filter")
    page.wait_for_url(re.compile(r".*face=yes.*"))
    assert page.locator("figure.cell .path").all_inner_texts() == ["messi5.jpg"]
    assert page.locator("figure.cell img").evaluate("img => img.naturalWidth") > 0  # thumbnail served


def test_review_tags_with_the_keyboard(browser, server):
    base, store, ids = server
    messi = ids["messi5.jpg"]
    page = logged_in(browser, base, "cur1", "/d/portraits?sort=score:aesthetic&order=asc")
    page.click(f'figure.cell[data-id="{messi}"] a')
    page.wait_for_selector("#tags li.tag")
    page.keyboard.press("a")  # accept the focused (first) tag
    page.wait_for_selector('#tags li.tag.accepted[data-text="1boy"]')
    page.keyboard.press("ArrowDown")
    page.keyboard.press("r")  # reject the next one
    page.wait_for_selector('#tags li.tag.rejected[data-text="soccer"]')
    assert tag_status(store, messi, "1boy") == "accepted"
    assert tag_status(store, messi, "soccer") == "rejected"
    page.keyboard.press("c")  # focus the caption editor
    page.keyboard.press("Control+A")
    page.keyboard.type("a footballer on a pitch")
    page.keyboard.press("Control+Enter")
    page.wait_for_function("() => document.getElementById('member-meta').textContent.includes('revision 4')")
    with store.session() as session:
        assert session.get(Member, messi).caption == "a footballer on a pitch"
    page.keyboard.press("ArrowRight")  # next image in the grid's order: aesthetic 6.1 → 6.6
    page.wait_for_url(re.compile(rf".*/m/{ids['Elarun_2560x1600.png']}\?.*"))
    assert page.locator("h1").inner_text().startswith("Elarun_2560x1600.png")
    page.keyboard.press("k")  # and back
    page.wait_for_url(re.compile(rf".*/m/{messi}\?.*"))


def test_bulk_rename_a_tag_and_commit_a_version(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits?tags_all=sky")
    page.select_option("#bulk-op", "rename")
    page.fill("#bulk-tag", "sky")
    page.fill("#bulk-new", "heaven")
    page.click("#bulk-preview")
    page.wait_for_function("() => document.getElementById('bulk-count').textContent.includes('will change')")
    assert page.locator("#bulk-count").inner_text() == "4 of 4 images will change"
    page.click("#bulk-apply")
    page.wait_for_selector("#flash:not([hidden])")
    assert "4 images changed" in page.locator("#flash").inner_text()
    with store.session() as session:
        assert session.scalars(select(Tag).where(Tag.text == "sky")).first() is None
        assert len(session.scalars(select(Tag).where(Tag.text == "heaven")).all()) == 4

    page.goto(base + "/d/portraits/versions")
    page.fill("#commit-message", "renamed sky to heaven")
    page.click('#commit-form button[type="submit"]')
    page.wait_for_selector("#flash:not([hidden])")
    assert "Committed version 1" in page.locator("#flash").inner_text()
    assert "renamed sky to heaven" in page.locator("#versions").inner_text()
    with store.session() as session:
        assert session.scalar(select(DatasetVersion.message)) == "renamed sky to heaven"


def test_conflict_message_when_another_curator_edited_first(browser, server):
    base, store, ids = server
    fish = ids["HappyFish.jpg"]
    one = logged_in(browser, base, "cur1", f"/d/portraits/m/{fish}")
    two = logged_in(browser, base, "cur2", f"/d/portraits/m/{fish}")
    one.keyboard.press("r")  # cur1 rejects "fish"
    one.wait_for_selector('#tags li.tag.rejected[data-text="fish"]')
    two.keyboard.press("a")  # cur2, on the page loaded before, tries to accept it
    two.wait_for_selector("#flash.conflict")
    message = two.locator("#flash").inner_text()
    assert "Not saved" in message and "cur1" in message
    two.wait_for_selector('#tags li.tag.rejected[data-text="fish"]')  # the page now shows cur1's change
    assert tag_status(store, fish, "fish") == "rejected"  # nothing overwritten
