"""Big images and tags in view, in Chromium: an image view that fills the screen (zoom, pan, compare,
masks, lineage), grid cells with tags and caption, the tag-frequency sidebar, autocomplete, the token
count, and 16-bit PNG thumbnails that show the picture."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image, ImageDraw, ImageOps

from store.models import Artifact, Image as ImageRow, Member, Tag
from tests.dashboards.browsing import logged_in, screenshot
from tests.dashboards.test_views import sixteen_bit_png

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1440, "height": 900}


def add_artifacts(store, member_id: int) -> None:
    """An 'upscale' artifact (a mirrored copy, twice the size) as the current image, with a face mask."""
    with store.session() as session:
        member = session.get(Member, member_id)
        image = session.get(ImageRow, member.image_id)
        original = Image.open(io.BytesIO(store.blobs.get(image.sha256, image.ext))).convert("RGB")
        big = ImageOps.mirror(original).resize((original.width * 2, original.height * 2))
        out = io.BytesIO()
        big.save(out, "PNG")
        sha = store.blobs.put(out.getvalue(), "png")
        upscale = Artifact(sha256=sha, ext="png", width=big.width, height=big.height, image_id=image.id,
                           step="upscale", params={"scale": 2}, params_hash="u" * 64, backend="lanczos")
        session.add(upscale)
        session.flush()
        mask = Image.new("L", big.size, 0)
        ImageDraw.Draw(mask).ellipse([big.width * 0.3, big.height * 0.1, big.width * 0.6, big.height * 0.5], fill=255)
        out = io.BytesIO()
        mask.save(out, "PNG")
        mask_sha = store.blobs.put(out.getvalue(), "png")
        session.add(Artifact(sha256=mask_sha, ext="png", width=big.width, height=big.height, image_id=image.id,
                             parent_id=upscale.id, step="mask", params={"name": "face", "step": "upscale"},
                             params_hash="m" * 64, backend="mask"))
        member.current_artifact_id = upscale.id


def wait_shown(page, selector: str = "#view-main") -> None:
    page.wait_for_function(f"() => document.querySelector('{selector}').dataset.ready === '1'")


def test_image_view_fills_the_screen_zooms_pans_compares_and_overlays_masks(browser, server):
    base, store, ids = server
    messi = ids["messi5.jpg"]
    add_artifacts(store, messi)
    page = logged_in(browser, base, "cur1", f"/d/portraits/m/{messi}")
    page.set_viewport_size(VIEWPORT)
    page.reload()
    wait_shown(page)
    stage = page.locator("#stage-main").bounding_box()
    shown = page.locator("#view-main").bounding_box()
    assert stage["height"] > 0.75 * VIEWPORT["height"] and stage["width"] > 0.6 * VIEWPORT["width"]
    assert stage["y"] + stage["height"] <= VIEWPORT["height"]  # "fit" shows all of it without scrolling
    # fitted: the image touches two sides of the stage (was a 320 px thumbnail)
    assert abs(shown["width"] - stage["width"]) < 2 or abs(shown["height"] - stage["height"]) < 2
    assert "upscale" in page.locator("#label-main").inner_text()  # the current artifact is shown first
    page.wait_for_function("() => document.querySelector('#stage-main canvas.mask-layer').dataset.ready === '1'")
    assert " ".join(page.locator("#mask-toggles").inner_text().split()) == "mask: face"
    screenshot(page, "i15_image_view")
    # a small window wraps the toolbar above the stage: the stage still ends inside the window
    page.set_viewport_size({"width": 1024, "height": 640})
    page.wait_for_function("() => { const s = document.querySelector('#stage-main').getBoundingClientRect();"
                           " return s.bottom <= window.innerHeight && s.height > 320; }")
    page.set_viewport_size(VIEWPORT)
    page.wait_for_function(f"() => document.querySelector('#stage-main').getBoundingClientRect().height"
                           f" > {0.75 * VIEWPORT['height']}")

    before = page.evaluate("window.imageView.state()")
    page.click("#zoom-in")
    page.click("#zoom-in")
    zoomed = page.evaluate("window.imageView.state()")
    assert zoomed["scale"] == pytest.approx(before["scale"] * 1.5625, rel=1e-3) and not zoomed["fitted"]
    page.mouse.move(stage["x"] + 300, stage["y"] + 300)
    page.mouse.down()
    page.mouse.move(stage["x"] + 200, stage["y"] + 250, steps=5)
    page.mouse.up()
    panned = page.evaluate("window.imageView.state()")
    assert panned["x"] == pytest.approx(zoomed["x"] - 100, abs=2) and panned["y"] == pytest.approx(zoomed["y"] - 50, abs=2)
    page.keyboard.press("1")  # 100 %: one file pixel per screen pixel
    assert page.locator("#zoom-level").inner_text() == "100%"
    page.keyboard.press("f")
    assert page.evaluate("window.imageView.state()")["fitted"]

    page.uncheck("#mask-toggles input")
    assert page.locator("#stage-main canvas.mask-layer").is_hidden()
    page.select_option("#compare", "original")  # side by side, moving together
    assert page.locator("#stage-compare").is_visible()
    left, right = page.locator("#stage-main").bounding_box(), page.locator("#stage-compare").bounding_box()
    assert abs(left["width"] - right["width"]) < 2 and right["x"] > left["x"] + left["width"] - 1
    page.click("#zoom-in")
    transforms = page.evaluate("[...document.querySelectorAll('.stage .layer')].map(l => l.style.transform)")
    assert transforms[0] == transforms[1]
    page.check("#mask-toggles input")
    screenshot(page, "i15_image_compare_side_by_side")
    page.select_option("#compare-mode", "slider")
    assert page.locator("#stage-compare").is_hidden() and page.locator("#slider").is_visible()
    page.locator("#slider").fill("30")
    assert page.evaluate("document.getElementById('view-over').style.clipPath") == "inset(0px 0px 0px 30%)"
    page.keyboard.press("f")
    screenshot(page, "i15_image_compare_slider")
    # the lineage under the image: original → align → upscale; clicking one shows it
    lineage = page.locator("#lineage > li")
    assert [li.locator("strong").inner_text() for li in lineage.all()] == ["original", "align", "upscale"]
    lineage.nth(0).locator(".show-view").click()
    wait_shown(page)
    assert page.locator("#label-main").inner_text().startswith("original")
    assert page.locator("#mask-toggles").inner_text().strip() == ""  # the original has no mask


def test_grid_cells_show_tags_and_caption_and_the_sidebar_filters(browser, server):
    base, store, ids = server
    page = logged_in(browser, base, "cur1", "/d/portraits")
    page.set_viewport_size(VIEWPORT)
    cell = page.locator(f'.cell[data-id="{ids["messi5.jpg"]}"]')
    assert [c.inner_text() for c in cell.locator(".chip").all()] == ["1boy", "soccer", "outdoors"]
    assert cell.locator(".chip.suggested").count() == 3
    assert cell.locator(".cell-caption").inner_text() == "a photo: messi5.jpg"
    page.wait_for_selector("#tag-frequencies a.freq")
    first = page.locator("#tag-frequencies a.freq").nth(0)
    assert first.inner_text().split() == ["outdoors", "4"]
    screenshot(page, "i15_grid")
    page.click('#tag-frequencies a.freq[data-text="sky"]')
    page.wait_for_url(re.compile(r".*tags_all=sky.*"))
    assert page.locator(".cell").count() == 4
    page.wait_for_selector('#tag-frequencies a.freq.included[data-text="sky"]')
    page.click('#tag-frequencies a.freq[data-text="night"]', modifiers=["Shift"])
    page.wait_for_url(re.compile(r".*tags_none=night.*"))
    assert page.locator(".cell").count() == 3
    assert ids["MilkyWay_1080x1920.png"] not in [int(c.get_attribute("data-id")) for c in page.locator(".cell").all()]
    page.wait_for_selector('#tag-frequencies a.freq.excluded[data-text="night"]')
    screenshot(page, "i15_grid_sidebar_filtered")
    page.click('#tag-frequencies a.freq[data-text="sky"]')  # again: drops it from the filter
    page.wait_for_function("() => !location.search.includes('tags_all')")
    assert page.locator(".cell").count() == 6


def test_autocomplete_with_counts_and_the_caption_token_count(browser, server):
    base, store, ids = server
    fish = ids["HappyFish.jpg"]
    with store.session() as session:  # as a booru tagger names it, stored unescaped
        session.add(Tag(member_id=ids["MilkyWay_1080x1920.png"], text="star_(symbol)", source="model:wd14"))
    page = logged_in(browser, base, "cur1", f"/d/portraits/m/{fish}")
    page.keyboard.press("t")
    page.keyboard.type("sk")
    page.wait_for_selector("ul.complete li")
    assert page.locator("ul.complete li").nth(0).inner_text().split() == ["sky", "4"]
    screenshot(page, "i15_autocomplete")
    page.keyboard.press("Enter")  # picks the suggestion
    assert page.input_value("#new-tag") == "sky"
    page.keyboard.press("Enter")  # adds it
    page.wait_for_selector('#tags li.tag.accepted[data-text="sky"]')
    page.keyboard.press("Escape")  # out of the box, then t: into it again
    page.keyboard.press("t")
    page.keyboard.type("star (")  # no need to type the escapes, nor the underscore
    page.wait_for_selector("ul.complete li:has-text('star_(symbol)')")
    assert page.locator("ul.complete li").nth(0).inner_text().split() == ["star_(symbol)", "1"]
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    page.wait_for_selector('#tags li.tag.accepted[data-text="star_(symbol)"]')
    page.wait_for_function("() => document.getElementById('token-count').textContent.includes('/ 75 tokens')")
    assert page.locator("#token-count").inner_text().startswith("7 / 75 tokens")  # a photo : happy|fish . jpg
    page.fill("#caption", "a fish " * 40)
    page.wait_for_selector("#token-count.over")
    assert "80 / 75 tokens" in page.locator("#token-count").inner_text()
    assert "5 past the window" in page.locator("#token-count").inner_text()


def test_16_bit_png_thumbnail_is_the_picture_not_blank(browser, server, photos):
    base, store, ids = server
    data = sixteen_bit_png(photos / "messi5.jpg")
    with store.session() as session:
        sha = store.blobs.put(data, "png")
        image = ImageRow(sha256=sha, phash="1" * 16, width=548, height=342, format="PNG", ext="png",
                         byte_size=len(data), mode="I;16")
        session.add(image)
        session.flush()
        dataset = session.get(Member, ids["messi5.jpg"]).dataset_id
        member = Member(dataset_id=dataset, image_id=image.id, source_path="scan_16bit.png", caption="a scan")
        session.add(member)
        session.flush()
        member_id = member.id
    page = logged_in(browser, base, "cur1", "/d/portraits")
    img = page.locator(f'.cell[data-id="{member_id}"] img')
    img.scroll_into_view_if_needed()
    page.wait_for_function(f"() => document.querySelector('.cell[data-id=\"{member_id}\"] img').complete")
    white, mean = page.evaluate(f"""() => {{
        const img = document.querySelector('.cell[data-id="{member_id}"] img');
        const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
        const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        let white = 0, sum = 0;
        for (let i = 0; i < d.length; i += 4) {{ if (d[i] > 250) white++; sum += d[i]; }}
        return [white / (d.length / 4), sum / (d.length / 4)];
    }}""")
    assert white < 0.05 and 60 < mean < 200  # was 99.7 % white
    page.goto(f"{base}/d/portraits/m/{member_id}")
    wait_shown(page)
    assert page.evaluate("document.getElementById('view-main').naturalWidth") == 548
