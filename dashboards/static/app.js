// Atelier dashboard: a little plain JavaScript over the JSON API (no framework, no CDN).
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf(), Accept: "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let data = {};
  try { data = await response.json(); } catch (e) { /* empty body */ }
  return { ok: response.ok, status: response.status, data };
}

function flash(text, kind = "info") {
  const box = document.getElementById("flash");
  box.textContent = text;
  box.className = kind;
  box.hidden = false;
}

// a message that survives a reload (after a write that changes the page)
function flashAfterReload(text, kind = "info") {
  sessionStorage.setItem("flash", JSON.stringify({ text, kind }));
  location.reload();
}

function typing(event) {
  const t = event.target;
  return t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable);
}

document.addEventListener("DOMContentLoaded", () => {
  const saved = sessionStorage.getItem("flash");
  if (saved) {
    sessionStorage.removeItem("flash");
    const { text, kind } = JSON.parse(saved);
    flash(text, kind);
  }
  const undo = document.getElementById("undo");
  if (undo) undo.addEventListener("click", undoLast);
  if (document.getElementById("member")) memberPage();
  if (document.getElementById("bulk")) bulkForm();
  document.querySelectorAll("form.tag-op").forEach(tagOpForm);
  const commit = document.getElementById("commit-form");
  if (commit) commitForm(commit);
  if (document.getElementById("users")) usersPage();
});

// undo one change (default: my newest); a change of several images asks first, naming the count
async function undoChange(entryId) {
  const body = entryId ? { entry_id: entryId } : {};
  let r = await api("POST", "/api/undo", body);
  if (r.status === 409 && r.data.confirm) {
    if (!confirm(`Undo ${r.data.action.replace(/_/g, " ")} (audit #${r.data.entry}) on ${r.data.confirm.toLocaleString()} images?`)) { flash("Nothing undone."); return; }
    r = await api("POST", "/api/undo", { ...body, entry_id: r.data.entry, confirm: r.data.confirm });
  }
  const images = (n) => n === 1 ? "1 image" : `${n.toLocaleString()} images`;
  if (r.ok) flashAfterReload(`Undid ${r.data.action.replace(/_/g, " ")} (audit #${r.data.undone}) on ${images(r.data.members.length)}`);
  else flash(r.data.error || `undo failed (${r.status})`, "error");
}
const undoLast = () => undoChange(null);

// ---------- image view ----------
function memberPage() {
  const root = document.getElementById("member");
  const canWrite = JSON.parse(document.getElementById("can-write").textContent);
  let state = JSON.parse(document.getElementById("member-data").textContent);
  let focus = 0;
  const list = document.getElementById("tags");
  const caption = document.getElementById("caption");
  // the caption text the editor's content started from: typed text is never replaced behind the curator's back
  let captionBase = state.caption || "";
  if (caption) caption.value = captionBase;
  const captionDirty = () => caption && caption.value !== captionBase;
  let leaveArmed = false;

  function render() {
    list.innerHTML = "";
    state.tags.forEach((tag, index) => {
      const li = document.createElement("li");
      li.className = `tag ${tag.status}` + (index === focus ? " focused" : "");
      li.dataset.text = tag.text;
      const conf = tag.confidence == null ? "" : ` ${(tag.confidence * 100).toFixed(0)}%`;
      li.innerHTML = `<span class="text"></span><small class="src"></small>`;
      li.querySelector(".text").textContent = tag.text;
      li.querySelector(".src").textContent = `${tag.status} · ${tag.source}${conf}`;
      li.addEventListener("click", () => { focus = index; render(); });
      if (canWrite) {
        for (const [label, action] of [["✓", "accepted"], ["✗", "rejected"]]) {
          const b = document.createElement("button");
          b.type = "button"; b.textContent = label; b.title = action;
          b.addEventListener("click", (e) => { e.stopPropagation(); focus = index; setStatus(action); });
          li.appendChild(b);
        }
      }
      list.appendChild(li);
    });
    if (caption) {
      if (caption.value.trim() === (state.caption || "")) { captionBase = state.caption || ""; }  // saved (by us or anyone)
      if (!captionDirty()) { caption.value = state.caption || ""; captionBase = caption.value; }
      else if ((state.caption || "") !== captionBase) showCaptionConflict(state.caption || "");
      if (window.updateTokenCount) window.updateTokenCount();
    }
    document.getElementById("status-badge").textContent = state.status === "active" ? "" : `${state.status}: ${state.excluded_reason || ""}`;
    const exclude = document.getElementById("toggle-exclude");
    if (exclude) exclude.textContent = state.status === "excluded" ? "Include (x)" : "Exclude (x)";
    const last = state.last_change;
    document.getElementById("member-meta").textContent =
      `revision ${state.revision}` + (state.reviewed_by ? ` · reviewed by ${state.reviewed_by}` : " · not yet reviewed") +
      (last ? ` · last change: ${last.action} by ${last.user}` : "");
    root.dataset.revision = state.revision;
  }

  // a caption conflict: both texts stay on screen until the curator picks one
  function showCaptionConflict(theirs) {
    const box = document.getElementById("caption-conflict");
    box.hidden = false;
    document.getElementById("their-caption").textContent = theirs;
    document.getElementById("their-caption-who").textContent =
      state.last_change ? `${state.last_change.user} (${state.last_change.action})` : "someone";
  }
  function closeCaptionConflict() { document.getElementById("caption-conflict").hidden = true; }

  async function send(method, path, body) {
    const r = await api(method, `/api/members/${state.id}${path}`, { ...body, revision: state.revision });
    if (r.ok) {
      state = { ...state, ...r.data };
      render();
      document.dispatchEvent(new CustomEvent("member-changed"));
      if (r.data.merged) flash("Saved. Another curator changed other parts of this image meanwhile; their changes are kept (shown).");
      return true;
    }
    if (r.status === 409 && r.data.current) {
      state = { ...state, ...r.data.current };
      render();
      const mine = path === "/caption" ? " Your caption is kept in the editor: choose below." : " The page now shows their change; redo yours if it still applies.";
      flash(`Not saved — ${r.data.error}.${mine}`, "conflict");
    } else {
      flash(r.data.error || `failed (${r.status})`, "error");
    }
    return false;
  }

  const focused = () => state.tags[focus];
  const setStatus = (status) => focused() && send("POST", "/tags/status", { text: focused().text, status });
  const removeTag = () => focused() && send("POST", "/tags/remove", { text: focused().text });
  const saveCaption = async () => {
    const text = caption.value;
    if (await send("PUT", "/caption", { caption: text })) {
      captionBase = state.caption || ""; caption.value = captionBase; closeCaptionConflict();
    } else if (document.getElementById("caption-conflict").hidden === false) {
      caption.value = text;  // keep what was typed
    }
  };
  const toggleExclude = () => {
    const excluded = state.status !== "excluded";
    const reasonBox = document.getElementById("exclude-reason");
    let reason = reasonBox.value;
    if (excluded && !reason) {
      reason = prompt("Why exclude this image?", "");
      if (reason === null) { flash("Not excluded (cancelled)."); return false; }
    }
    return send("PUT", "/exclusion", { excluded, reason });
  };

  if (canWrite) {
    document.getElementById("add-tag").addEventListener("submit", async (e) => {
      e.preventDefault();
      const input = document.getElementById("new-tag");
      if (input.value.trim() && await send("POST", "/tags", { text: input.value.trim() })) input.value = "";
    });
    document.getElementById("save-caption").addEventListener("click", saveCaption);
    document.getElementById("keep-mine").addEventListener("click", saveCaption);
    document.getElementById("take-theirs").addEventListener("click", () => {
      caption.value = state.caption || ""; captionBase = caption.value; closeCaptionConflict();
      flash("Kept their caption; yours was discarded.");
    });
    document.getElementById("toggle-exclude").addEventListener("click", toggleExclude);
    document.getElementById("mark-reviewed").addEventListener("click", () => send("POST", "/reviewed", {}));
    caption.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); saveCaption(); caption.blur(); }
    });
    caption.addEventListener("input", () => { leaveArmed = false; });
    window.addEventListener("beforeunload", (e) => { if (captionDirty() && !leaveArmed) { e.preventDefault(); e.returnValue = ""; } });
  }

  // leaving with an unsaved caption: the first j/k only warns; a second one leaves (and drops it)
  const go = (id) => {
    const a = document.getElementById(id);
    if (!a) return;
    if (captionDirty() && !leaveArmed) {
      leaveArmed = true;
      flash("Unsaved caption: Ctrl+Enter saves it; press the key again to leave without saving.", "conflict");
      return;
    }
    leaveArmed = true;
    location.href = a.href;
  };
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && typing(e)) { e.target.blur(); return; }
    if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
    const keys = {
      ArrowRight: () => go("next"), j: () => go("next"),
      ArrowLeft: () => go("prev"), k: () => go("prev"), n: () => go("next-unreviewed"),
      ArrowDown: () => { focus = Math.min(focus + 1, state.tags.length - 1); render(); },
      ArrowUp: () => { focus = Math.max(focus - 1, 0); render(); },
    };
    if (canWrite) Object.assign(keys, {
      a: () => setStatus("accepted"), r: () => setStatus("rejected"),
      Delete: removeTag, Backspace: removeTag,
      t: () => document.getElementById("new-tag").focus(),
      c: () => caption.focus(),
      x: toggleExclude, v: () => send("POST", "/reviewed", {}), u: undoLast,
    });
    const handler = keys[e.key];
    if (handler) { e.preventDefault(); handler(); }
  });
  document.querySelectorAll("a#next, a#prev, a#next-unreviewed").forEach((a) => a.addEventListener("click", (e) => {
    e.preventDefault(); go(a.id);
  }));
  render();
}

// ---------- bulk edit on the grid ----------
function bulkForm() {
  const form = document.getElementById("bulk");
  const dataset = form.dataset.dataset;
  const filter = JSON.parse(document.getElementById("grid-filter").textContent);
  const apply = document.getElementById("bulk-apply");
  const count = document.getElementById("bulk-count");
  const selected = () => [...document.querySelectorAll("input.select:checked")].map((c) => Number(c.value));
  document.querySelectorAll("input.select").forEach((c) => c.addEventListener("change", () => {
    document.getElementById("selected-count").textContent = selected().length;
  }));
  const op = document.getElementById("bulk-op"), tag = document.getElementById("bulk-tag"), renamed = document.getElementById("bulk-new");
  // what the two text boxes mean for each operation
  const FIELDS = {
    accept: ["tag"], reject: ["tag"], add: ["tag"], remove: ["tag"], rename: ["tag", "new name"],
    caption_prepend: ["trigger word, e.g. ohwx"], caption_append: ["text to append"],
    caption_replace: ["text to replace", "replace with (empty: remove)"], exclude: ["reason (optional)"], include: [],
  };
  const relabel = () => {
    const [first, second] = FIELDS[op.value];
    tag.hidden = first === undefined; tag.placeholder = first || "";
    tag.required = !!first && !first.includes("optional");
    renamed.hidden = second === undefined; renamed.placeholder = second || "";
  };
  op.addEventListener("change", relabel);
  relabel();
  let preview = null;  // the dry run's token: Apply changes exactly the previewed images, or nothing
  const body = (dryRun) => {
    const data = new FormData(form);
    const request = { op: data.get("op"), tag: (data.get("tag") || "").trim(), new: (data.get("new") || "").trim() || null, dry_run: dryRun };
    if (data.get("scope") === "selection") request.member_ids = selected();
    else request.filter = filter;
    if (!dryRun) request.preview = preview;
    return request;
  };
  // any change to the form invalidates the preview: the count must match what is applied
  form.addEventListener("input", () => { apply.disabled = true; count.textContent = ""; preview = null; });
  document.getElementById("bulk-preview").addEventListener("click", async () => {
    if (!form.reportValidity()) return;
    const r = await api("POST", `/api/datasets/${dataset}/bulk`, body(true));
    if (!r.ok) { flash(r.data.error || `failed (${r.status})`, "error"); return; }
    preview = r.data.preview;
    count.textContent = `${r.data.changed} of ${r.data.matched} images will change`;
    apply.disabled = r.data.changed === 0;
    apply.textContent = `Apply to ${r.data.changed} images`;
  });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("POST", `/api/datasets/${dataset}/bulk`, body(false));
    if (r.ok) {
      const what = `${r.data.op.replace("_", " ")}${r.data.tag ? " “" + r.data.tag + "”" : ""}${r.data.new ? " → “" + r.data.new + "”" : ""}`;
      flashAfterReload(`${what}: ${r.data.changed} images changed`);
    } else {
      flash(r.data.error || `failed (${r.status})`, r.status === 409 ? "conflict" : "error");
      if (r.status === 409) { apply.disabled = true; count.textContent = "preview again"; }
    }
  });
}

// ---------- tag table: rename / merge / blacklist, preview then apply ----------
function tagOpForm(form) {
  const button = form.querySelector("button");
  const preview = form.querySelector(".preview");
  let previewed = null;  // the dry run's token: Apply changes exactly the previewed images, or nothing
  const reset = () => { previewed = null; button.textContent = "Preview"; preview.textContent = ""; };
  form.addEventListener("input", reset);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    const r = await api("POST", form.dataset.api, { ...data, dry_run: !previewed, preview: previewed });
    if (!r.ok) {
      flash(r.data.error || `failed (${r.status})`, r.status === 409 ? "conflict" : "error");
      if (r.status === 409) reset();
      return;
    }
    if (!previewed) {
      preview.textContent = `${r.data.changed} images will change`;
      button.textContent = `Apply to ${r.data.changed} images`;
      previewed = r.data.preview;
    } else {
      flashAfterReload(`${r.data.tag}: ${r.data.changed} images changed`);
    }
  });
}

// ---------- versions ----------
function commitForm(form) {
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await api("POST", form.dataset.api, { message: form.querySelector('[name="message"]').value });
    if (r.ok) flashAfterReload(`Committed version ${r.data.number} (${r.data.entries} images)`);
    else flash(r.data.error || `failed (${r.status})`, "error");
  });
}

// ---------- users (admin) ----------
function usersPage() {
  const name = (el) => el.closest("tr").dataset.name;
  const done = (r, text) => r.ok ? flashAfterReload(text) : flash(r.data.error || `failed (${r.status})`, "error");
  document.querySelectorAll(".user-role").forEach((s) => s.addEventListener("change", async () => {
    done(await api("PUT", `/api/users/${encodeURIComponent(name(s))}/role`, { role: s.value }), `${name(s)} is now a ${s.value}`);
  }));
  document.querySelectorAll(".user-toggle").forEach((b) => b.addEventListener("click", async () => {
    const action = b.dataset.action;
    if (action === "disable" && !confirm(`Disable ${name(b)}? Their sessions end now.`)) return;
    done(await api("POST", `/api/users/${encodeURIComponent(name(b))}/${action}`), `${name(b)}: ${action}d`);
  }));
  document.querySelectorAll(".user-reset").forEach((b) => b.addEventListener("click", async () => {
    if (!confirm(`Reset the password of ${name(b)}? Their sessions end now.`)) return;
    const r = await api("POST", `/api/users/${encodeURIComponent(name(b))}/password`, {});
    if (r.ok) flash(`New password for ${name(b)} (shown once): ${r.data.password}`);
    else flash(r.data.error || `failed (${r.status})`, "error");
  }));
  document.getElementById("add-user").addEventListener("submit", async (e) => {
    e.preventDefault();
    const data = Object.fromEntries(new FormData(e.target));
    const r = await api("POST", "/api/users", data);
    if (r.ok) flash(`Added ${r.data.name} (${r.data.role}); password (shown once): ${r.data.password}`);
    else flash(r.data.error || `failed (${r.status})`, "error");
  });
}
