/* BurnStation technician UI: the few live parts (no library, no build step).
   Everything is written with textContent / DOM calls, never innerHTML: patient names are hostile. */
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

/* forms with data-confirm ask first */
document.addEventListener("submit", function (ev) {
  const text = ev.target.getAttribute && ev.target.getAttribute("data-confirm");
  if (text && !window.confirm(text)) ev.preventDefault();
});

/* the derived AE titles, shown as the station's AE title is typed */
function setupAetDerive() {
  const input = document.querySelector("input[data-aet-derive]");
  if (!input) return;
  const out = document.getElementById(input.getAttribute("data-aet-derive"));
  function show() {
    const base = input.value.trim();
    if (!base) { out.textContent = "(enter an AE title)"; return; }
    out.textContent = [base, base + "_E", base + "_P", base + "_TE", base + "_TP"].join("  ");
    out.classList.toggle("too-long", base.length > 13);
  }
  input.addEventListener("input", show);
  show();
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function pad(n) { return (n < 10 ? "0" : "") + n; }

function shortTime(ts) {
  const d = new Date(ts * 1000);
  return pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
}

function actionForm(jobId, action, label) {
  const form = el("form");
  form.method = "post";
  form.action = "/jobs/" + encodeURIComponent(jobId) + "/" + action;
  if (action === "cancel") form.setAttribute("data-confirm", "Cancel job " + jobId + "?");
  const token = el("input");
  token.type = "hidden"; token.name = "csrf"; token.value = csrfToken();
  const button = el("button", "small", label);
  button.type = "submit";
  form.append(token, button);
  return form;
}

function jobRow(job, canAct) {
  const tr = el("tr");
  tr.setAttribute("data-job", job.id);
  const id = el("td", "id");
  const link = el("a", null, job.id);
  link.href = "/jobs/" + encodeURIComponent(job.id);
  id.append(link, el("br"), el("span", "muted", shortTime(job.created_at)));
  const patient = el("td", "patient", job.patient_name);
  patient.append(el("br"), el("span", "muted", job.patient_id));
  const state = el("td");
  state.append(el("span", "state s-" + job.state, job.state));
  const prog = el("td");
  const bar = el("progress");
  bar.max = 1; bar.value = job.progress;
  prog.append(bar, " ", el("span", "pct", Math.floor(job.progress * 100) + "%"));
  const actions = el("td", "actions");
  if (canAct) {
    if (job.can_cancel) actions.append(actionForm(job.id, "cancel", "Cancel"));
    if (job.can_retry) actions.append(actionForm(job.id, "retry", "Retry"));
  }
  const robot = el("td", "robot", job.robot || job.role);
  const message = el("td", "message", job.message);
  const discs = el("td", "num discs", job.discs + " \u00d7 " + job.copies);
  [[state, "State"], [prog, "Progress"], [robot, "Robot"], [message, "Message"], [discs, "Discs \u00d7 copies"]]
    .forEach(function (pair) { pair[0].setAttribute("data-label", pair[1]); });
  tr.append(id, patient, state, prog, robot, message, discs, actions);
  return tr;
}

function setupJobs() {
  const table = document.getElementById("jobs");
  if (!table) return;
  const canAct = table.getAttribute("data-can-act") === "1";
  const status = document.getElementById("live-state");
  const empty = document.getElementById("no-jobs");
  async function poll() {
    try {
      const resp = await fetch("/api/jobs", {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (resp.status === 401) { status.textContent = "Session ended: log in again."; return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const body = table.tBodies[0];
      const rows = data.jobs.map(function (job) { return jobRow(job, canAct); });
      body.replaceChildren.apply(body, rows);
      empty.classList.toggle("hidden", data.jobs.length > 0);
      status.textContent = "Last update " + new Date().toLocaleTimeString();
    } catch (err) {
      status.textContent = "Update failed (" + err.message + "); retrying.";
    }
    window.setTimeout(poll, 2000);
  }
  window.setTimeout(poll, 2000);
}

function setupRobots() {
  const cards = document.querySelectorAll("section.robot[data-robot]");
  if (!cards.length) return;
  async function poll() {
    try {
      const resp = await fetch("/api/robots", {credentials: "same-origin"});
      if (resp.ok) {
        const data = await resp.json();
        data.robots.forEach(function (r) {
          const card = document.querySelector('section.robot[data-robot="' + CSS.escape(r.name) + '"]');
          if (!card) return;
          const badge = card.querySelector('[data-key="online"]');
          badge.textContent = r.online ? "online" : "offline";
          badge.className = "badge " + (r.online ? "ok" : "bad");
          card.querySelector('[data-key="message"]').textContent = r.message;
          card.querySelector('[data-key="jobs"]').textContent = r.jobs.join(", ") || "none";
          const stackers = card.querySelector('[data-key="stackers"]');
          stackers.replaceChildren();
          Object.keys(r.stackers).forEach(function (k) {
            const dd = el("dd", null, r.stackers[k]);
            dd.setAttribute("data-stacker", k);
            stackers.append(el("dt", null, k), dd);
          });
          const ink = card.querySelector('[data-key="ink"]');
          ink.replaceChildren();
          Object.keys(r.ink).forEach(function (colour) {
            const label = el("label", "inkbar");
            const meter = el("meter");
            meter.min = 0; meter.max = 100; meter.low = 15; meter.high = 30; meter.optimum = 100;
            meter.value = r.ink[colour];
            meter.setAttribute("data-ink", colour);
            const pct = el("span", "pct", r.ink[colour] + "%");
            pct.setAttribute("data-ink-text", colour);
            label.append(el("span", null, colour), " ", meter, " ", pct);
            ink.append(label);
          });
          const drives = card.querySelector('[data-key="drives"]');
          drives.replaceChildren.apply(drives, r.drives.map(function (d) {
            return el("li", null, Object.keys(d).map(function (k) { return k + ": " + d[k]; }).join(", "));
          }));
          if (!r.drives.length) drives.append(el("li", "muted", "none reported"));
        });
      }
    } catch (err) { /* the next poll tries again */ }
    window.setTimeout(poll, 3000);
  }
  window.setTimeout(poll, 3000);
}

function postForm(action, label, confirmText) {
  const form = el("form");
  form.method = "post";
  form.action = action;
  if (confirmText) form.setAttribute("data-confirm", confirmText);
  const token = el("input");
  token.type = "hidden"; token.name = "csrf"; token.value = csrfToken();
  const button = el("button", "small", label);
  button.type = "submit";
  form.append(token, button);
  return form;
}

function transferRow(t) {
  const tr = el("tr");
  tr.setAttribute("data-transfer", t.id);
  const id = el("td", "id", t.id);
  id.append(el("br"), el("span", "muted", shortTime(t.created_at)));
  const kind = el("td", null, t.kind + (t.rule ? " [" + t.rule + "]" : ""));
  kind.append(el("br"), el("span", "muted uid", t.what));
  const node = el("td", null, t.node);
  const state = el("td");
  state.append(el("span", "state s-" + t.state, t.state));
  const counts = el("td", "num", [t.completed, t.warning, t.failed, t.remaining].join(" / "));
  const message = el("td", "message", t.message + (t.burn_job ? " (burn job " + t.burn_job + ")" : ""));
  const actions = el("td", "actions");
  const base = "/transfers/" + encodeURIComponent(t.id) + "/";
  if (t.can_cancel) actions.append(postForm(base + "cancel", "Cancel", "Cancel transfer " + t.id + "?"));
  if (t.can_retry) actions.append(postForm(base + "retry", "Retry"));
  [[kind, "Kind"], [node, "Node"], [state, "State"], [counts, "Counts"], [message, "Message"]]
    .forEach(function (pair) { pair[0].setAttribute("data-label", pair[1]); });
  tr.append(id, kind, node, state, counts, message, actions);
  return tr;
}

/* the transfer queue: rows and live counts from /api/transfers */
function setupTransfers() {
  const table = document.getElementById("transfers");
  if (!table) return;
  const status = document.getElementById("live-state");
  const empty = document.getElementById("no-transfers");
  const counts = document.getElementById("transfer-counts");
  async function poll() {
    try {
      const resp = await fetch("/api/transfers", {credentials: "same-origin", headers: {"Accept": "application/json"}});
      if (resp.status === 401) { status.textContent = "Session ended: log in again."; return; }
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const data = await resp.json();
      const body = table.tBodies[0];
      body.replaceChildren.apply(body, data.transfers.map(transferRow));
      empty.classList.toggle("hidden", data.transfers.length > 0);
      counts.replaceChildren(el("span", "badge", (data.counts.running || 0) + " running"), " ",
                             el("span", "badge", (data.counts.queued || 0) + " queued"));
      status.textContent = "Last update " + new Date().toLocaleTimeString();
    } catch (err) {
      status.textContent = "Update failed (" + err.message + "); retrying.";
    }
    window.setTimeout(poll, 2000);
  }
  window.setTimeout(poll, 2000);
}

/* delayed groups: seconds left until they burn */
function setupCountdowns() {
  const items = document.querySelectorAll(".countdown[data-deadline]");
  if (!items.length) return;
  window.setInterval(function () {
    const now = Date.now() / 1000;
    items.forEach(function (item) {
      const left = Math.max(0, Math.round(Number(item.getAttribute("data-deadline")) - now));
      item.textContent = left + " s";
    });
  }, 1000);
}

document.addEventListener("DOMContentLoaded", function () {
  setupAetDerive();
  setupCountdowns();
  setupJobs();
  setupRobots();
  setupTransfers();
});
