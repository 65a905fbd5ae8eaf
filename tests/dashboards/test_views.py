"""Tags in view and readable history, through the API: cell tags, tag frequencies, autocomplete, token
counts, 16-bit thumbnails, the audit log page in words."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dashboards.thumbnails import make_thumbnail
from dashboards.tokens import WINDOW, approximate_count, count_tokens
from store.models import Tag
from tests.tiny_models.fixtures import tiny_clip  # noqa: F401


def sixteen_bit_png(photo) -> bytes:
    """A real 16-bit greyscale PNG (mode I;16) made from a fixture photo."""
    grey = np.asarray(Image.open(photo).convert("L"), dtype=np.uint16) * 257
    out = io.BytesIO()
    Image.fromarray(grey).save(out, "PNG")  # uint16 → mode I;16
    return out.getvalue()


def test_16_bit_png_thumbnail_shows_the_picture_not_white(photos):
    data = sixteen_bit_png(photos / "messi5.jpg")
    assert Image.open(io.BytesIO(data)).mode in ("I;16", "I")
    thumb = np.asarray(Image.open(io.BytesIO(make_thumbnail(data))).convert("L"), dtype=float)
    expected = np.asarray(Image.open(photos / "messi5.jpg").convert("L").resize(thumb.shape[::-1]), dtype=float)
    assert (thumb > 250).mean() < 0.05  # was 99.7 % white
    assert abs(thumb.mean() - expected.mean()) < 4 and np.corrcoef(thumb.ravel(), expected.ravel())[0, 1] > 0.95


def test_grid_cells_carry_top_tags_and_the_caption(seeded, client):
    store, ids = seeded
    c = client("cur1")
    c.post(f"/api/members/{ids['messi5.jpg']}/tags/status", json={"text": "soccer", "status": "rejected", "revision": 1})
    items = {i["id"]: i for i in c.get("/api/datasets/portraits/members").json()["items"]}
    messi = items[ids["messi5.jpg"]]
    assert [t["text"] for t in messi["tags"]] == ["1boy", "outdoors", "soccer"]  # rejected last
    assert messi["tags"][-1]["status"] == "rejected" and messi["caption"] == "a photo: messi5.jpg"
    html = c.get("/d/portraits").text
    assert '<li class="chip rejected" title="rejected">soccer</li>' in html and "a photo: messi5.jpg" in html


def test_tag_frequencies_and_autocomplete_with_counts(seeded, client):
    store, ids = seeded
    c = client("viewer")
    top = c.get("/api/datasets/portraits/tags/top").json()["tags"]
    assert top[:2] == [{"text": "outdoors", "count": 4}, {"text": "sky", "count": 4}]
    with store.session() as session:  # stored as booru writes it, unescaped
        session.add(Tag(member_id=ids["MilkyWay_1080x1920.png"], text="star_(symbol)", source="model:wd14"))
    assert c.get("/api/datasets/portraits/tags/suggest", params={"q": "star ("}).json()["tags"] == [
        {"text": "star_(symbol)", "count": 1}, ]
    assert [t["text"] for t in c.get("/api/datasets/portraits/tags/suggest", params={"q": "s"}).json()["tags"]] == [
        "sky", "soccer", "star_(symbol)", "stars"]
    assert c.get("/api/datasets/portraits/tags/suggest", params={"q": "%"}).json()["tags"] == []


def test_token_count_is_exact_with_a_clip_tokenizer_and_approximate_without(tiny_clip, client, monkeypatch):  # noqa: F811
    from transformers import CLIPTokenizer

    text = "a photo of a footballer on a pitch, outdoors, 1boy"
    monkeypatch.delenv("ATELIER_CLIP_TOKENIZER", raising=False)
    rough = client("viewer").get("/api/tokens", params={"text": text}).json()
    assert rough == {"count": approximate_count(text), "window": WINDOW, "over": 0, "exact": False}
    assert approximate_count(text) == 15  # a photo of a footballer(2) on a pitch , outdoors(2) , 1 boy
    monkeypatch.setenv("ATELIER_CLIP_TOKENIZER", str(tiny_clip))
    exact = count_tokens(text)
    assert exact["exact"] and exact["count"] == len(CLIPTokenizer.from_pretrained(tiny_clip)(text)["input_ids"]) - 2
    long = count_tokens("word " * 100)
    assert long["over"] == long["count"] - WINDOW > 0


def test_audit_page_reads_before_and_after_without_json_escapes(seeded, client):
    store, ids = seeded
    cur1, boss = client("cur1"), client("boss")
    messi = ids["messi5.jpg"]
    cur1.put(f"/api/members/{messi}/caption", json={"caption": "Café — ümlaut ☃", "revision": 1})
    cur1.post("/api/datasets/portraits/bulk", json={"op": "accept", "tag": "sky", "filter": {}})
    html = boss.get("/audit").text
    assert "\\u" not in html and "Café — ümlaut ☃" in html
    assert '<del class="before">a photo: messi5.jpg</del> → <ins class="after">Café — ümlaut ☃</ins>' in html
    assert "tag sky</span>:\n        <del class=\"before\">suggested</del> → <ins class=\"after\">accepted</ins>" in html
    assert html.count('class="undo-entry"') == 2
    only = boss.get("/audit", params={"image": messi, "action": "caption_edit", "user": "cur1"}).text
    assert "Café" in only and "<td>bulk accept</td>" not in only
    bulk_for_image = boss.get("/audit", params={"image": ids["leuvenB.jpg"]}).text
    assert "<td>bulk accept</td>" in bulk_for_image and "Café" not in bulk_for_image


def test_bulk_apply_changes_the_previewed_images_or_nothing(seeded, client):
    store, ids = seeded
    cur1, cur2 = client("cur1"), client("cur2")
    ask = {"op": "accept", "tag": "sky", "filter": {"tags_all": "sky"}}
    preview = cur1.post("/api/datasets/portraits/bulk", json={**ask, "dry_run": True}).json()
    assert preview["changed"] == 4
    milky = ids["MilkyWay_1080x1920.png"]
    cur2.post(f"/api/members/{milky}/tags/status", json={"text": "sky", "status": "accepted", "revision": 1})
    stale = cur1.post("/api/datasets/portraits/bulk", json={**ask, "preview": preview["preview"]})
    assert stale.status_code == 409 and "not the ones previewed" in stale.json()["error"]
    assert "now 3 of 4" in stale.json()["error"]
    again = cur1.post("/api/datasets/portraits/bulk", json={**ask, "dry_run": True}).json()
    applied = cur1.post("/api/datasets/portraits/bulk", json={**ask, "preview": again["preview"]}).json()
    assert applied["changed"] == 3


def test_bulk_caption_trigger_word_and_exclude_include_undo_as_one(seeded, client):
    store, ids = seeded
    cur1 = client("cur1")
    every = {"filter": {}}
    r = cur1.post("/api/datasets/portraits/bulk", json={"op": "caption_prepend", "tag": "ohwx", **every}).json()
    assert r["changed"] == 7
    again = cur1.post("/api/datasets/portraits/bulk", json={"op": "caption_prepend", "tag": "ohwx", **every,
                                                             "dry_run": True}).json()
    assert again["changed"] == 0  # already there: never twice
    messi = ids["messi5.jpg"]
    assert cur1.get(f"/api/members/{messi}").json()["caption"] == "ohwx, a photo: messi5.jpg"
    cur1.post("/api/datasets/portraits/bulk", json={"op": "caption_append", "tag": "best quality",
                                                    "member_ids": [messi]})
    cur1.post("/api/datasets/portraits/bulk", json={"op": "caption_replace", "tag": "ohwx", "new": "sks",
                                                    "member_ids": [messi]})
    detail = cur1.get(f"/api/members/{messi}").json()
    assert detail["caption"] == "sks, a photo: messi5.jpg, best quality" and detail["caption_source"] == "human:cur1"
    stale = cur1.put(f"/api/members/{messi}/caption", json={"caption": "mine", "revision": 1})
    assert stale.status_code == 409  # the bulk edit stamped the caption: an edit from an older page conflicts
    out = cur1.post("/api/datasets/portraits/bulk", json={"op": "exclude", "tag": "blurry",
                                                          "filter": {"tags_all": "sky"}}).json()
    assert out["changed"] == 4
    assert cur1.get("/api/datasets/portraits/members").json()["total"] == 3
    excluded = cur1.get("/api/datasets/portraits/members", params={"status": "excluded"}).json()["items"]
    assert {i["id"] for i in excluded} == {ids[n] for n in ("leuvenB.jpg", "FlyingKonqui_2560x1600.png",
                                                             "MilkyWay_1080x1920.png", "Elarun_2560x1600.png")}
    refused = cur1.post("/api/undo", json={"entry_id": out["audit_id"]})
    assert refused.status_code == 409 and refused.json()["confirm"] == 4
    cur1.post("/api/undo", json={"entry_id": out["audit_id"], "confirm": 4}).raise_for_status()
    assert cur1.get("/api/datasets/portraits/members").json()["total"] == 7
    first = cur1.post("/api/undo", json={"entry_id": r["audit_id"], "confirm": 7})
    assert first.status_code == 409 and "caption of image" in first.json()["error"]  # messi's was edited since


def test_tag_table_rename_is_bound_to_its_preview_too(seeded, client):
    store, ids = seeded
    cur1, cur2 = client("cur1"), client("cur2")
    ask = {"tag": "outdoors", "new": "outside"}
    preview = cur1.post("/api/datasets/portraits/tags/rename", json={**ask, "dry_run": True}).json()
    assert preview["changed"] == 4
    fish = ids["HappyFish.jpg"]
    cur2.post(f"/api/members/{fish}/tags/remove", json={"text": "outdoors", "revision": 1}).raise_for_status()
    stale = cur1.post("/api/datasets/portraits/tags/rename", json={**ask, "preview": preview["preview"]})
    assert stale.status_code == 409 and "preview again" in stale.json()["error"]
    with store.session() as session:
        assert session.query(Tag).filter(Tag.text == "outside").count() == 0
