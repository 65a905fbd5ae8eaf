"""Curators edit through the API: stale edits get 409 and lose nothing, bulk edits touch exactly the
filtered images, every change is in the audit log, and undo puts things back."""

from __future__ import annotations

import pytest

from store import queries


def tags_of(c, member_id):
    return {t["text"]: t["status"] for t in c.get(f"/api/members/{member_id}").json()["tags"]}


def names(page):
    return sorted(item["source_path"] for item in page["items"])


@pytest.mark.parametrize("few_rows", [3000, 0], ids=["in-list", "exists-probe"])
def test_grid_filters_and_sorts(client, monkeypatch, few_rows):
    monkeypatch.setattr(queries, "FEW_ROWS", few_rows)  # both query shapes give the same answers
    c = client("viewer")
    grid = lambda **q: c.get("/api/datasets/portraits/members", params=q).json()
    assert grid()["total"] == 7
    assert names(grid(tags_all="sky, outdoors")) == ["Elarun_2560x1600.png", "leuvenB.jpg"]
    assert names(grid(tags_any="fish, dragon")) == ["FlyingKonqui_2560x1600.png", "HappyFish.jpg"]
    assert names(grid(tags_all="sky", tags_none="night")) == ["Elarun_2560x1600.png",
                                                              "FlyingKonqui_2560x1600.png", "leuvenB.jpg"]
    assert names(grid(face="yes")) == ["messi5.jpg"]
    assert "messi5.jpg" not in names(grid(face="no"))
    assert names(grid(min_aesthetic="6.5", max_aesthetic="8")) == ["Elarun_2560x1600.png", "FlyingKonqui_2560x1600.png"]
    ordered = [i["source_path"] for i in grid(sort="score:aesthetic")["items"]]
    assert ordered[0] == "MilkyWay_1080x1920.png" and ordered[-1] == "ellipses.jpg"
    paged = grid(per_page=3, page=3)
    assert paged["pages"] == 3 and len(paged["items"]) == 1
    assert grid(tag_source="human")["total"] == 0
    assert c.get("/api/datasets/portraits/members", params={"sort": "bogus"}).status_code == 400


def test_two_curators_on_one_image_merge_different_parts_and_conflict_on_the_same(seeded, client):
    _, ids = seeded
    messi = ids["messi5.jpg"]
    one, two = client("cur1"), client("cur2")
    seen_by_two = two.get(f"/api/members/{messi}").json()  # both load the page at the same revision
    revision = one.get(f"/api/members/{messi}").json()["revision"]
    assert seen_by_two["revision"] == revision

    r = one.post(f"/api/members/{messi}/tags/status", json={"text": "soccer", "status": "accepted", "revision": revision})
    assert r.status_code == 200 and r.json()["revision"] == revision + 1 and not r.json()["merged"]

    # another tag and the caption were not touched by cur1: cur2's edits made on the old page merge
    other_tag = two.post(f"/api/members/{messi}/tags/status", json={"text": "1boy", "status": "rejected", "revision": revision})
    assert other_tag.status_code == 200 and other_tag.json()["merged"]
    caption = two.put(f"/api/members/{messi}/caption", json={"caption": "cur2's caption", "revision": revision})
    assert caption.status_code == 200
    state = caption.json()
    assert state["caption"] == "cur2's caption"
    assert {t["text"]: t["status"] for t in state["tags"]} == {"1boy": "rejected", "soccer": "accepted",
                                                              "outdoors": "suggested"}

    # the same tag, or the caption, changed since the page was loaded: 409, nothing written
    same_tag = two.post(f"/api/members/{messi}/tags/status", json={"text": "soccer", "status": "rejected", "revision": revision})
    assert same_tag.status_code == 409 and "soccer" in same_tag.json()["error"]
    stale = one.put(f"/api/members/{messi}/caption", json={"caption": "cur1's caption", "revision": revision + 1})
    assert stale.status_code == 409
    body = stale.json()
    assert body["conflict"] and "caption" in body["error"] and "cur2" in body["error"]
    current = body["current"]
    assert current["caption"] == "cur2's caption"  # the stale edit wrote nothing
    assert {t["text"]: t["status"] for t in current["tags"]}["soccer"] == "accepted"

    retried = one.put(f"/api/members/{messi}/caption", json={"caption": "cur1's caption", "revision": current["revision"]})
    assert retried.status_code == 200
    final = two.get(f"/api/members/{messi}").json()
    assert final["caption"] == "cur1's caption"
    assert {t["text"]: t["status"] for t in final["tags"]}["soccer"] == "accepted"  # cur1's edit kept


def test_bulk_edit_changes_exactly_the_filtered_images(seeded, client):
    _, ids = seeded
    c = client("cur1")
    viewer = client("viewer")
    everyone_before = {name: tags_of(viewer, mid) for name, mid in ids.items()}
    request = {"op": "rename", "tag": "sky", "new": "heaven", "filter": {"tags_all": "sky", "tags_none": "night"}}
    preview = c.post("/api/datasets/portraits/bulk", json={**request, "dry_run": True}).json()
    assert preview["changed"] == 3 and preview["matched"] == 3
    assert {name: tags_of(viewer, mid) for name, mid in ids.items()} == everyone_before  # preview wrote nothing

    applied = c.post("/api/datasets/portraits/bulk", json=request).json()
    assert applied["changed"] == 3
    renamed = {"Elarun_2560x1600.png", "FlyingKonqui_2560x1600.png", "leuvenB.jpg"}
    for name, mid in ids.items():
        tags = tags_of(viewer, mid)
        if name in renamed:
            assert "heaven" in tags and "sky" not in tags, name
            assert {k: v for k, v in tags.items() if k != "heaven"} == \
                {k: v for k, v in everyone_before[name].items() if k != "sky"}
        else:
            assert tags == everyone_before[name], name

    selection = [ids["messi5.jpg"], ids["HappyFish.jpg"], ids["ellipses.jpg"]]
    accept = c.post("/api/datasets/portraits/bulk",
                    json={"op": "accept", "tag": "outdoors", "member_ids": selection}).json()
    assert accept["matched"] == 3 and accept["changed"] == 2  # ellipses has no "outdoors"
    assert tags_of(viewer, ids["messi5.jpg"])["outdoors"] == "accepted"
    assert tags_of(viewer, ids["leuvenB.jpg"])["outdoors"] == "suggested"  # not selected
    other = c.post("/api/datasets/portraits/bulk", json={"op": "add", "tag": "x", "member_ids": [99999]})
    assert other.status_code == 404


def test_tag_table_rename_merge_blacklist(client):
    c = client("cur1")
    table = lambda: {t["text"]: t for t in c.get("/api/datasets/portraits/tags").json()["tags"]}
    assert table()["sky"]["count"] == 4 and table()["sky"]["acceptance_rate"] is None
    assert c.post("/api/datasets/portraits/tags/merge", json={"tag": "outdoors", "new": "sky", "dry_run": True}).json()["changed"] == 4
    c.post("/api/datasets/portraits/tags/merge", json={"tag": "outdoors", "new": "sky"})
    after = table()
    assert "outdoors" not in after and after["sky"]["count"] == 6  # two images had both
    c.post("/api/datasets/portraits/tags/blacklist", json={"tag": "abstract"})
    assert table()["abstract"]["rejected"] == 1 and table()["abstract"]["acceptance_rate"] == 0.0
    rules = c.get("/api/datasets/portraits/tags").json()["rules"]
    assert {(r["kind"], r["text"], r["replacement"]) for r in rules} == {("rename", "outdoors", "sky"),
                                                                         ("blacklist", "abstract", None)}
    missing = c.post("/api/datasets/portraits/tags/merge", json={"tag": "sky", "new": "no-such-tag"})
    assert missing.status_code == 404


def test_audit_log_holds_every_change_and_undo_restores(seeded, client):
    store, ids = seeded
    fish = ids["HappyFish.jpg"]
    c, admin = client("cur1"), client("boss")
    original = c.get(f"/api/members/{fish}").json()
    rev = original["revision"]
    steps = [("post", "/tags", {"text": "goldfish"}), ("post", "/tags/status", {"text": "fish", "status": "accepted"}),
             ("post", "/tags/status", {"text": "outdoors", "status": "rejected"}), ("post", "/tags/remove", {"text": "underwater"}),
             ("put", "/caption", {"caption": "a goldfish"}), ("put", "/exclusion", {"excluded": True, "reason": "blurry"}),
             ("put", "/exclusion", {"excluded": False}), ("post", "/reviewed", {})]
    for method, path, body in steps:
        r = getattr(c, method)(f"/api/members/{fish}{path}", json={**body, "revision": rev})
        assert r.status_code == 200, (path, r.text)
        rev = r.json()["revision"]
    c.post("/api/datasets/portraits/bulk", json={"op": "add", "tag": "photo", "filter": {}})
    c.post("/api/datasets/portraits/tags/rename", json={"tag": "sky", "new": "heaven"})
    assert c.post("/api/datasets/portraits/versions", json={"message": "first"}).json()["number"] == 1

    log = admin.get("/api/audit", params={"user": "cur1"}).json()
    actions = [e["action"] for e in reversed(log["entries"])]
    assert actions == ["tag_add", "tag_accept", "tag_reject", "tag_remove", "caption_edit", "exclude", "include",
                       "review", "bulk_add", "tag_rename", "commit_version"]
    caption_entry = next(e for e in log["entries"] if e["action"] == "caption_edit")
    assert caption_entry["target"] == f"member:{fish}"
    snap_before = caption_entry["before"]["members"][str(fish)]["fields"]["caption"]
    snap_after = caption_entry["after"]["members"][str(fish)]["fields"]["caption"]
    assert (snap_before, snap_after) == ("a photo: HappyFish.jpg", "a goldfish")
    assert admin.get("/api/audit", params={"action": "exclude"}).json()["entries"][0]["after"]["members"][str(fish)]["fields"]["excluded_reason"] == "blurry"

    # undo walks back through cur1's changes (the commit itself stays: versions are immutable);
    # the two changes of several images ask for their count first
    confirmed = []
    for _ in range(10):
        r = c.post("/api/undo")
        if r.status_code == 409 and "confirm" in r.json():
            assert f"{r.json()['confirm']:,} images" in r.json()["error"]
            confirmed.append((r.json()["action"], r.json()["confirm"]))
            r = c.post("/api/undo", json={"confirm": r.json()["confirm"]})
        assert r.status_code == 200, r.text
    assert confirmed == [("tag_rename", 4), ("bulk_add", 7)]
    restored = c.get(f"/api/members/{fish}").json()
    for key in ("caption", "status", "excluded_reason", "reviewed_at", "reviewed_by"):
        assert restored[key] == original[key], key
    assert restored["revision"] > original["revision"]  # revisions only go up: an undo is a change too
    assert restored["tags"] == original["tags"]
    assert {t["text"] for t in c.get("/api/datasets/portraits/tags").json()["tags"]} >= {"sky", "underwater"}
    assert c.get("/api/datasets/portraits/tags").json()["rules"] == []
    assert c.post("/api/undo").status_code == 409  # nothing left
    assert len(admin.get("/api/audit", params={"action": "undo"}).json()["entries"]) == 10


def test_undo_refuses_only_what_was_overwritten_and_says_by_whom(seeded, client):
    _, ids = seeded
    messi = ids["messi5.jpg"]
    one, two, admin = client("cur1"), client("cur2"), client("boss")
    rev = one.get(f"/api/members/{messi}").json()["revision"]
    rev = one.post(f"/api/members/{messi}/tags/status", json={"text": "soccer", "status": "accepted", "revision": rev}).json()["revision"]
    rev = one.put(f"/api/members/{messi}/caption", json={"caption": "mine", "revision": rev}).json()["revision"]
    rev = two.post(f"/api/members/{messi}/tags", json={"text": "ball", "revision": rev}).json()["revision"]
    two.put(f"/api/members/{messi}/caption", json={"caption": "theirs", "revision": rev})

    refused = one.post("/api/undo")  # my newest change (the caption) was overwritten by cur2
    assert refused.status_code == 409
    message = refused.json()["error"]
    assert "caption" in message and "cur2" in message and "caption_edit" in message
    # my older change can still be undone, from the image's history
    history = one.get(f"/api/members/{messi}/history").json()["entries"]
    accept = next(e for e in history if e["action"] == "tag_accept")
    assert accept["undoable"] and not next(e for e in history if e["user"] == "cur1" and e["action"] == "caption_edit")["undoable"]
    assert one.post("/api/undo", json={"entry_id": accept["id"]}).status_code == 200
    state = one.get(f"/api/members/{messi}").json()
    assert state["caption"] == "theirs" and "ball" in {t["text"] for t in state["tags"]}
    assert {t["text"]: t["status"] for t in state["tags"]}["soccer"] == "suggested"
    # someone else's change: only an admin may undo it
    ball = next(e for e in history if e["action"] == "tag_add")
    assert one.post("/api/undo", json={"entry_id": ball["id"]}).status_code == 409
    assert admin.post("/api/undo", json={"entry_id": ball["id"]}).status_code == 200
    assert "ball" not in {t["text"] for t in one.get(f"/api/members/{messi}").json()["tags"]}


def test_commit_and_diff_versions(seeded, client):
    _, ids = seeded
    c = client("cur1")
    assert c.post("/api/datasets/portraits/versions", json={"message": "start"}).json()["number"] == 1
    assert c.post("/api/datasets/portraits/versions", json={"message": "again"}).status_code == 409
    rev = c.get(f"/api/members/{ids['leuvenB.jpg']}").json()["revision"]
    c.put(f"/api/members/{ids['leuvenB.jpg']}/exclusion", json={"excluded": True, "reason": "dup", "revision": rev})
    rev = c.get(f"/api/members/{ids['messi5.jpg']}").json()["revision"]
    c.post(f"/api/members/{ids['messi5.jpg']}/tags", json={"text": "ball", "revision": rev})
    assert c.post("/api/datasets/portraits/versions", json={"message": "curated"}).json()["number"] == 2
    diff = c.get("/api/datasets/portraits/versions/diff", params={"a": 1, "b": 2}).json()
    assert [e["source_path"] for e in diff["removed"]] == ["leuvenB.jpg"]
    assert diff["changed"][0]["tags_added"] == ["ball"]
    assert [v["message"] for v in c.get("/api/datasets/portraits/versions").json()["versions"]] == ["start", "curated"]


def test_pages_render_for_a_viewer(seeded, client):
    _, ids = seeded
    v = client("viewer")
    assert "messi5.jpg" in v.get("/d/portraits").text
    assert "messi5.jpg" in v.get("/d/portraits", params={"face": "yes"}).text
    page = v.get(f"/d/portraits/m/{ids['messi5.jpg']}", params={"from": "grid"}).text  # → a review session
    assert "align" in page and "opencv-cascade" in page and 'id="prev"' in page and "7 / 7" in page
    assert "sky" in v.get("/d/portraits/tags").text
    assert "<svg" in v.get("/d/portraits/charts").text
    assert "No versions yet" in v.get("/d/portraits/versions").text
    assert "No training runs yet" in v.get("/runs").text
    assert v.get("/docs").status_code == 200
    assert v.get("/d/nope").status_code == 404
