// Tags in view: autocomplete from the dataset's tags (with counts), the grid's tag-frequency sidebar,
// and the caption's CLIP token count against the 75-token window.
"use strict";

const datasetName = () => document.body.dataset.dataset || "";

// ---------- autocomplete on every input.tag-complete (data-list: a comma-separated list, complete the last) ----------
function tagComplete(input) {
  const box = document.createElement("ul");
  box.className = "complete";
  box.hidden = true;
  box.setAttribute("role", "listbox");
  input.setAttribute("autocomplete", "off");
  input.insertAdjacentElement("afterend", box);
  input.parentElement.classList.add("complete-host");
  let items = [], active = -1, timer = null, asked = "";
  const isList = input.dataset.list === "1";
  const typed = () => isList ? input.value.split(",").pop().trimStart() : input.value;
  const close = () => { box.hidden = true; active = -1; };
  const choose = (index) => {
    const text = items[index].text;
    if (isList) {
      const parts = input.value.split(",");
      parts[parts.length - 1] = (parts.length > 1 ? " " : "") + text;
      input.value = parts.join(",");
    } else {
      input.value = text;
    }
    close();
    asked = typed().trim();  // the chosen tag: no need to ask again
    input.dispatchEvent(new Event("input", { bubbles: true }));
    input.focus();
  };
  const show = () => {
    box.innerHTML = "";
    items.forEach((item, index) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.className = index === active ? "active" : "";
      li.innerHTML = `<span class="text"></span><small class="count"></small>`;
      li.querySelector(".text").textContent = item.text;
      li.querySelector(".count").textContent = item.count.toLocaleString();
      li.addEventListener("mousedown", (e) => { e.preventDefault(); choose(index); });
      box.appendChild(li);
    });
    box.hidden = items.length === 0;
  };
  const ask = async () => {
    const q = typed().trim();
    if (q === asked) return;
    asked = q;
    if (!q) { items = []; close(); return; }
    const r = await api("GET", `/api/datasets/${encodeURIComponent(datasetName())}/tags/suggest?q=${encodeURIComponent(q)}`);
    if (!r.ok || typed().trim() !== q) return;
    items = r.data.tags; active = items.length ? 0 : -1; show();
  };
  input.addEventListener("input", () => {
    clearTimeout(timer); timer = setTimeout(ask, 120);
  });
  input.addEventListener("keydown", (e) => {
    if (box.hidden) return;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault(); e.stopPropagation();
      active = (active + (e.key === "ArrowDown" ? 1 : -1) + items.length) % items.length; show();
    } else if ((e.key === "Enter" || e.key === "Tab") && active >= 0) {
      e.preventDefault(); e.stopPropagation(); choose(active);
    } else if (e.key === "Escape") {
      e.stopPropagation(); close();
    }
  });
  input.addEventListener("blur", () => setTimeout(close, 100));
}

// ---------- the grid's sidebar: the dataset's most frequent tags; click filters, shift-click excludes ----------
async function tagSidebar() {
  const list = document.getElementById("tag-frequencies");
  const here = new URLSearchParams(location.search);
  const split = (key) => (here.get(key) || "").split(",").map((t) => t.trim()).filter(Boolean);
  const r = await api("GET", `/api/datasets/${encodeURIComponent(datasetName())}/tags/top`);
  list.innerHTML = "";
  if (!r.ok) { list.textContent = r.data.error || "tags could not be loaded"; return; }
  const all = split("tags_all"), none = split("tags_none");
  for (const tag of r.data.tags) {
    const li = document.createElement("li");
    const a = document.createElement("a");
    a.className = "freq" + (all.includes(tag.text) ? " included" : "") + (none.includes(tag.text) ? " excluded" : "");
    a.dataset.text = tag.text;
    a.href = "#";
    a.title = "click: only images with it · shift-click: only images without it · again: drop it from the filter";
    a.innerHTML = `<span class="text"></span><small class="count"></small>`;
    a.querySelector(".text").textContent = tag.text;
    a.querySelector(".count").textContent = tag.count.toLocaleString();
    a.addEventListener("click", (e) => {
      e.preventDefault();
      const key = e.shiftKey ? "tags_none" : "tags_all", other = e.shiftKey ? "tags_all" : "tags_none";
      const mine = split(key), theirs = split(other).filter((t) => t !== tag.text);
      const next = mine.includes(tag.text) ? mine.filter((t) => t !== tag.text) : [...mine, tag.text];
      const params = new URLSearchParams(location.search);
      params.delete("page");
      for (const [k, v] of [[key, next], [other, theirs]]) v.length ? params.set(k, v.join(", ")) : params.delete(k);
      location.search = params.toString();
    });
    li.appendChild(a);
    list.appendChild(li);
  }
  if (!r.data.tags.length) list.innerHTML = '<li class="muted">no tags yet</li>';
}

// ---------- caption token count ----------
function tokenCounter() {
  const caption = document.getElementById("caption");
  const out = document.getElementById("token-count");
  if (!caption || !out) return;
  let timer = null, seq = 0;
  const update = async () => {
    const mine = ++seq;
    const r = await api("GET", `/api/tokens?text=${encodeURIComponent(caption.value)}`);
    if (!r.ok || mine !== seq) return;
    out.textContent = `${r.data.count} / ${r.data.window} tokens${r.data.exact ? "" : " (approx.)"}` +
      (r.data.over ? ` — ${r.data.over} past the window are not seen` : "");
    out.className = r.data.over ? "token-count over" : "token-count";
    out.title = r.data.exact ? "counted with the CLIP tokenizer" : "approximate count (no CLIP tokenizer on the server)";
  };
  window.updateTokenCount = () => { clearTimeout(timer); timer = setTimeout(update, 150); };
  caption.addEventListener("input", window.updateTokenCount);
  window.updateTokenCount();
}

document.addEventListener("DOMContentLoaded", () => {
  if (datasetName()) document.querySelectorAll("input.tag-complete").forEach(tagComplete);
  if (document.getElementById("tag-frequencies")) tagSidebar();
  tokenCounter();
});
