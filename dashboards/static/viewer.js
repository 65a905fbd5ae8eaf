// The image view: fills the screen, fit / 100% / wheel zoom / drag to pan, compare the shown image with
// any other of its lineage (side by side, both panes moving together, or one pane with a slider),
// and the shown image's masks drawn over it in colour.
"use strict";

const MASK_COLOURS = [[255, 0, 110], [0, 170, 255], [255, 190, 0], [0, 200, 120]];

function imageViewer() {
  const views = JSON.parse(document.getElementById("views-data").textContent);
  const byKey = Object.fromEntries(views.map((v) => [v.key, v]));
  const mainStage = document.getElementById("stage-main"), compareStage = document.getElementById("stage-compare");
  const main = document.getElementById("view-main"), over = document.getElementById("view-over");
  const other = document.getElementById("view-compare"), slider = document.getElementById("slider");
  const compareSelect = document.getElementById("compare"), modeSelect = document.getElementById("compare-mode");
  const masksBox = mainStage.querySelector(".masks"), toggles = document.getElementById("mask-toggles");
  const layers = [mainStage, compareStage].map((s) => s.querySelector(".layer"));
  let shown = (views.find((v) => v.current) || views[0]).key, compared = "";
  let size = { w: 1, h: 1 }, view = { scale: 1, x: 0, y: 0 }, fitted = true;
  const src = (v) => `/thumbs/${v.sha256}?side=2048`;

  function apply() {
    for (const layer of layers) {
      layer.style.width = `${size.w}px`; layer.style.height = `${size.h}px`;
      layer.style.transform = `translate(${view.x}px, ${view.y}px) scale(${view.scale})`;
    }
    const v = byKey[shown];
    document.getElementById("zoom-level").textContent =
      fitted ? `fit · ${Math.round(view.scale * 100 * size.w / v.width) || 0}%` : `${Math.round(view.scale * 100 * size.w / v.width)}%`;
  }
  function fitRow() {
    // the stage row reaches down to the window's bottom edge from wherever the toolbar above it ends
    // (it wraps on narrow windows), so "fit" shows the whole image without scrolling
    const row = document.getElementById("stage-row");
    const top = row.getBoundingClientRect().top + window.scrollY;
    row.style.height = `${Math.max(320, window.innerHeight - top - 12)}px`;
  }
  function fit() {
    fitRow();
    const box = mainStage.getBoundingClientRect();
    const scale = Math.min(box.width / size.w, box.height / size.h) || 1;
    view = { scale, x: (box.width - size.w * scale) / 2, y: (box.height - size.h * scale) / 2 };
    fitted = true; apply();
  }
  function zoomAt(factor, cx, cy) {
    const scale = Math.min(Math.max(view.scale * factor, 0.02), 40);
    view = { scale, x: cx - (cx - view.x) * (scale / view.scale), y: cy - (cy - view.y) * (scale / view.scale) };
    fitted = false; apply();
  }
  const centre = () => { const b = mainStage.getBoundingClientRect(); return [b.width / 2, b.height / 2]; };
  // 100%: one pixel of the original file per screen pixel (the screen copy may be smaller than the file)
  function actual() { const [cx, cy] = centre(); zoomAt((byKey[shown].width / size.w) / view.scale, cx, cy); }

  function drawMasks() {
    masksBox.innerHTML = "";
    toggles.innerHTML = "";
    byKey[shown].masks.forEach((mask, index) => {
      const colour = MASK_COLOURS[index % MASK_COLOURS.length];
      const label = document.createElement("label");
      label.className = "mask-toggle";
      label.innerHTML = `<input type="checkbox" checked> <span class="swatch"></span> mask: <span class="name"></span>`;
      label.querySelector(".name").textContent = mask.name;
      label.querySelector(".swatch").style.background = `rgb(${colour.join(",")})`;
      const canvas = document.createElement("canvas");
      canvas.className = "mask-layer";
      canvas.dataset.name = mask.name;
      masksBox.appendChild(canvas);
      label.querySelector("input").addEventListener("change", (e) => { canvas.hidden = !e.target.checked; });
      toggles.appendChild(label);
      const img = new Image();
      img.onload = () => {  // grey value → opacity, in this mask's colour
        canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
        const ctx = canvas.getContext("2d");
        ctx.drawImage(img, 0, 0);
        const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
        for (let i = 0; i < data.data.length; i += 4) {
          const lum = data.data[i];
          [data.data[i], data.data[i + 1], data.data[i + 2]] = colour;
          data.data[i + 3] = lum * 0.45;
        }
        ctx.putImageData(data, 0, 0);
        canvas.dataset.ready = "1";
      };
      img.src = `/blobs/${mask.sha256}`;
    });
  }

  function show(key) {
    shown = key;
    const v = byKey[key];
    main.onload = () => { size = { w: main.naturalWidth, h: main.naturalHeight }; fit(); main.dataset.ready = "1"; };
    main.dataset.ready = "";
    main.src = src(v);
    main.alt = v.label;
    document.getElementById("label-main").textContent = v.label;
    document.querySelectorAll("#lineage li").forEach((li) => li.classList.toggle("shown", li.dataset.key === key));
    drawMasks();
    compare(compared);
  }
  function compare(key) {
    compared = key;
    compareSelect.value = key;
    const v = byKey[key], slide = !!v && modeSelect.value === "slider";
    compareStage.hidden = !v || slide;
    over.hidden = !slide; slider.hidden = !slide;
    document.getElementById("stage-row").classList.toggle("split", !!v && !slide);
    if (v) {
      (slide ? over : other).src = src(v);
      (slide ? over : other).alt = v.label;
      document.getElementById("label-compare").textContent = v.label;
      document.getElementById("label-main").textContent = slide ? `${byKey[shown].label} ← → ${v.label}` : byKey[shown].label;
      slider.dispatchEvent(new Event("input"));
    } else {
      document.getElementById("label-main").textContent = byKey[shown].label;
    }
    requestAnimationFrame(fit);
  }

  // the slider: the compared image covers the part right of the handle
  slider.addEventListener("input", () => { over.style.clipPath = `inset(0 0 0 ${slider.value}%)`; });
  compareSelect.addEventListener("change", () => compare(compareSelect.value));
  modeSelect.addEventListener("change", () => compare(compared));
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("zoom-actual").addEventListener("click", actual);
  document.getElementById("zoom-in").addEventListener("click", () => zoomAt(1.25, ...centre()));
  document.getElementById("zoom-out").addEventListener("click", () => zoomAt(0.8, ...centre()));
  document.querySelectorAll("#lineage li").forEach((li) => {
    li.querySelector(".show-view").addEventListener("click", () => show(li.dataset.key));
    li.querySelector(".compare-view").addEventListener("click", () => compare(li.dataset.key === compared ? "" : li.dataset.key));
  });
  for (const stage of [mainStage, compareStage]) {
    stage.addEventListener("wheel", (e) => {
      e.preventDefault();
      const b = stage.getBoundingClientRect();
      zoomAt(e.deltaY < 0 ? 1.15 : 1 / 1.15, e.clientX - b.left, e.clientY - b.top);
    }, { passive: false });
    let drag = null;
    stage.addEventListener("pointerdown", (e) => {
      if (e.target === slider) return;
      drag = { x: e.clientX - view.x, y: e.clientY - view.y }; stage.setPointerCapture(e.pointerId); stage.classList.add("dragging");
    });
    stage.addEventListener("pointermove", (e) => {
      if (!drag) return;
      view = { ...view, x: e.clientX - drag.x, y: e.clientY - drag.y }; fitted = false; apply();
    });
    stage.addEventListener("pointerup", () => { drag = null; stage.classList.remove("dragging"); });
  }
  window.addEventListener("resize", () => { if (fitted) fit(); else fitRow(); });
  document.addEventListener("keydown", (e) => {
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = { f: fit, "1": actual, "+": () => zoomAt(1.25, ...centre()), "=": () => zoomAt(1.25, ...centre()),
                   "-": () => zoomAt(0.8, ...centre()) };
    if (keys[e.key]) { e.preventDefault(); keys[e.key](); }
  });
  window.imageView = { show, compare, fit, state: () => ({ shown, compared, ...view, fitted }) };
  show(shown);
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.getElementById("views-data")) imageViewer();
});
