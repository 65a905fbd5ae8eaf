// Undo per change: an image's history panel (every change that touched it, newest first) and the audit log's
// undo buttons. A change that cannot be undone says why (overwritten since, and by whom) instead of a button.
"use strict";

const shown = (value) => value === null || value === undefined || value === "" ? "–" : String(value);

function changeLine(c) {
  const li = document.createElement("li");
  li.innerHTML = `<span class="part"></span>: <del class="before"></del> → <ins class="after"></ins>`;
  li.querySelector(".part").textContent = c.part;
  li.querySelector(".before").textContent = shown(c.before);
  li.querySelector(".after").textContent = shown(c.after);
  return li;
}

async function memberHistory() {
  const list = document.getElementById("history-list");
  const id = document.getElementById("member").dataset.id;
  const canWrite = JSON.parse(document.getElementById("can-write").textContent);
  const r = await api("GET", `/api/members/${id}/history`);
  list.innerHTML = "";
  if (!r.ok) { list.textContent = r.data.error || "history could not be loaded"; return; }
  for (const e of r.data.entries) {
    const li = document.createElement("li");
    li.className = "entry" + (e.undone_at ? " undone" : "");
    li.dataset.entry = e.id;
    const when = new Date(e.at).toLocaleString();
    li.innerHTML = `<div><strong class="action"></strong> <small class="who"></small></div><ul class="changes"></ul>`;
    li.querySelector(".action").textContent = e.action.replace(/_/g, " ") + (e.images > 1 ? ` (${e.images.toLocaleString()} images)` : "");
    li.querySelector(".who").textContent = `${e.user} · ${when} · #${e.id}`;
    const changes = li.querySelector(".changes");
    e.changes.forEach((c) => changes.appendChild(changeLine(c)));
    if (canWrite && !e.undone_at) {
      if (e.undoable) {
        const b = document.createElement("button");
        b.type = "button"; b.className = "undo-entry"; b.textContent = "Undo";
        b.addEventListener("click", () => undoChange(e.id));
        li.appendChild(b);
      } else if (e.why_not) {
        const why = document.createElement("p");
        why.className = "why-not"; why.textContent = e.why_not;
        li.appendChild(why);
      }
    } else if (e.undone_at) {
      const done = document.createElement("small");
      done.className = "muted"; done.textContent = " undone";
      li.querySelector("div").appendChild(done);
    }
    list.appendChild(li);
  }
  if (!r.data.entries.length) list.innerHTML = '<li class="muted">no changes yet</li>';
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.getElementById("history-list")) {
    memberHistory();
    document.addEventListener("member-changed", memberHistory);
  }
  document.querySelectorAll("button.undo-entry[data-entry]").forEach((b) =>
    b.addEventListener("click", () => undoChange(Number(b.dataset.entry))));
});
