"""Undo and bulk edits a curator can trust, in Chromium: an image's history panel with undo per change (and why
not, when a change was overwritten since), a bulk undo that names its count first, bulk apply bound to its
preview, bulk caption and exclude edits, and the audit log in words with undo buttons."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from store.models import Member, Tag
from tests.dashboards.browsing import logged_in, screenshot
from tests.dashboards.seed import PASSWORD

pytestmark = pytest.mark.browser


def api_as(base: str, name: str):
    """A plain HTTP client for a second curator acting meanwhile."""
    import httpx

    c = httpx.Client(base_url=base)
    token = c.post("/api/login", json={"name": name, "password": PASSWORD}).json()["csrf_token"]
    c.headers["X-CSRF-Token"] = token
    return c


def revision(store, member_id: int) -> int:
    with store.session() as session:
        return session.get(Member, member_id).revision


def tag_status(store, member_id: int, text: str) -> str | None:
    with store.session() as session:
        return session.scalar(select(Tag.status).where(Tag.member_id == member_id, Tag.text == text))


def test_history_panel_undoes_one_change_and_says_why_not_for_an_overwritten_one(browser, server):
    base, store, ids = server
    leuven = ids["leuvenB.jpg"]
    page = logged_in(browser, base, "cur1", f"/d/portraits/m/{leuven}")
    page.keyboard.press("a")  # accept "building"
    page.wait_for_selector('#history-list li.entry[data-entry] .changes li')
    page.keyboard.press("ArrowDown")
    page.keyboard.press("a")  # accept "outdoors"
    page.wait_for_function("() => document.querySelectorAll('#history-list li.entry').length === 2")
    newest = page.locator("#history-list li.entry").nth(0)
    assert " ".join(newest.locator(".changes").inner_text().split()) == "tag outdoors: suggested → accepted"
    cur2 = api_as(base, "cur2")  # another curator rejects "building" after me
    cur2.post(f"/api/members/{leuven}/tags/status",
              json={"text": "building", "status": "rejected", "revision": revision(store, leuven)}).raise_for_status()
    page.reload()
    page.wait_for_function("() => document.querySelectorAll('#history-list li.entry').length === 3")
    mine = page.locator("#history-list li.entry").nth(2)  # my first change: overwritten by cur2
    why = mine.locator(".why-not").inner_text()
    assert "building" in why and "changed again by cur2" in why and mine.locator("button.undo-entry").count() == 0
    screenshot(page, "i15_history_panel")
    # my other change (a different tag) still undoes, from its own Undo button
    page.locator("#history-list li.entry").nth(1).locator("button.undo-entry").click()
    page.wait_for_selector("#flash:not([hidden])")
    assert "Undid tag accept" in page.locator("#flash").inner_text()
    assert tag_status(store, leuven, "outdoors") == "suggested" and tag_status(store, leuven, "building") == "rejected"


def test_bulk_edits_bound_to_their_preview_and_a_bulk_undo_names_its_count(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits?tags_all=sky")
    page.select_option("#bulk-op", "caption_prepend")
    assert page.get_attribute("#bulk-tag", "placeholder").startswith("trigger word") and page.locator("#bulk-new").is_hidden()
    page.fill("#bulk-tag", "ohwx")
    page.click("#bulk-preview")
    page.wait_for_function("() => document.getElementById('bulk-count').textContent.includes('will change')")
    assert page.locator("#bulk-count").inner_text() == "4 of 4 images will change"
    milky = ids["MilkyWay_1080x1920.png"]
    cur2 = api_as(base, "cur2")  # meanwhile another curator gives one of them the trigger word by hand
    cur2.put(f"/api/members/{milky}/caption", json={"caption": "ohwx, stars", "revision": revision(store, milky)})
    page.click("#bulk-apply")
    page.wait_for_selector("#flash.conflict")
    assert "not the ones previewed" in page.locator("#flash").inner_text()
    with store.session() as session:
        assert not [c for c in session.scalars(select(Member.caption)) if c.startswith("ohwx, a photo")]
    page.click("#bulk-preview")
    page.wait_for_function("() => document.getElementById('bulk-count').textContent.startsWith('3 of 4')")
    page.click("#bulk-apply")
    page.wait_for_selector("#flash:has-text('images changed')")
    assert "3 images changed" in page.locator("#flash").inner_text()
    cell = page.locator(f'.cell[data-id="{ids["leuvenB.jpg"]}"] .cell-caption')
    assert cell.inner_text() == "ohwx, a photo: leuvenB.jpg"
    screenshot(page, "i15_bulk_caption")

    page.check(f'.cell[data-id="{ids["leuvenB.jpg"]}"] input.select')
    page.check('input[name="scope"][value="selection"]')
    page.select_option("#bulk-op", "exclude")
    page.fill("#bulk-tag", "blurry")
    page.click("#bulk-preview")
    page.wait_for_function("() => document.getElementById('bulk-count').textContent.startsWith('1 of 1')")
    page.click("#bulk-apply")
    page.wait_for_selector("#flash:has-text('1 images changed')")
    with store.session() as session:
        leuven = session.get(Member, ids["leuvenB.jpg"])
        assert (leuven.status, leuven.excluded_reason) == ("excluded", "blurry")

    # Undo takes back my newest change (the exclusion: one image); the caption edit of 3 asks first, naming the count
    page.click("#undo")
    page.wait_for_selector("#flash:has-text('Undid bulk exclude')")
    asked = []
    page.on("dialog", lambda d: (asked.append(d.message), d.dismiss() if len(asked) == 1 else d.accept()))
    page.click("#undo")
    page.wait_for_selector("#flash:has-text('Nothing undone')")
    assert len(asked) == 1 and re.fullmatch(r"Undo bulk caption prepend \(audit #\d+\) on 3 images\?", asked[0])
    page.click("#undo")
    page.wait_for_selector("#flash:has-text('Undid bulk caption prepend')")
    with store.session() as session:
        captions = dict(session.execute(select(Member.source_path, Member.caption)).all())
    assert captions["leuvenB.jpg"] == "a photo: leuvenB.jpg" and captions["MilkyWay_1080x1920.png"] == "ohwx, stars"


def test_audit_log_reads_before_and_after_filters_and_undoes(browser, server):
    base, store, ids = server
    fish = ids["HappyFish.jpg"]
    cur1 = api_as(base, "cur1")
    cur1.put(f"/api/members/{fish}/caption", json={"caption": "Ein Fisch — unter Wasser ☃", "revision": 1})
    cur1.post(f"/api/members/{fish}/tags/status", json={"text": "fish", "status": "rejected",
                                                        "revision": revision(store, fish)}).raise_for_status()
    cur1.post("/api/datasets/portraits/bulk", json={"op": "accept", "tag": "outdoors", "filter": {}}).raise_for_status()
    page = logged_in(browser, base, "boss", "/audit")
    text = page.locator("#audit").inner_text()
    assert "\\u" not in text and "a photo: HappyFish.jpg → Ein Fisch — unter Wasser ☃" in text
    assert "tag fish: suggested → rejected" in text and "bulk accept" in text
    screenshot(page, "i15_audit_log")
    page.select_option('#audit-filters select[name="action"]', "tag_reject")
    page.click("#audit-filters button")
    page.wait_for_url("**action=tag_reject**")
    assert page.locator("#audit tr[data-entry]").count() == 1
    page.goto(f"{base}/audit?image={fish}")
    assert page.locator("#audit tr[data-entry]").count() == 3  # its caption, its tag and the bulk edit
    row = page.locator("#audit tr[data-entry]", has_text="tag fish")
    row.locator("button.undo-entry").click()
    page.wait_for_selector("#flash:not([hidden])")
    assert "Undid tag reject" in page.locator("#flash").inner_text()
    assert tag_status(store, fish, "fish") == "suggested"
    assert "undone" in page.locator("#audit tr[data-entry]", has_text="tag fish").inner_text()


def test_tag_table_rename_applies_what_it_previewed(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits/tags")
    page.fill('#rename-form input[name="tag"]', "outdoors")
    page.fill('#rename-form input[name="new"]', "outside")
    page.click("#rename-form button")
    page.wait_for_selector("#rename-form .preview:has-text('4 images will change')")
    cur2 = api_as(base, "cur2")  # meanwhile one of the four loses the tag
    fish = ids["HappyFish.jpg"]
    cur2.post(f"/api/members/{fish}/tags/remove", json={"text": "outdoors", "revision": revision(store, fish)})
    page.click("#rename-form button")
    page.wait_for_selector("#flash.conflict")
    assert "preview again" in page.locator("#flash").inner_text()
    page.click("#rename-form button")
    page.wait_for_selector("#rename-form .preview:has-text('3 images will change')")
    page.click("#rename-form button")
    page.wait_for_selector("#flash:has-text('3 images changed')")
    assert tag_status(store, ids["leuvenB.jpg"], "outside") == "suggested"
