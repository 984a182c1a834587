// speechpipe dashboard: one snapshot a second from /dashboard/events (server-sent events), drawn
// into the page; deploy actions go to POST /admin/deploy after a confirmation. No dependencies.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let latest = null;

function fmt(x, digits = 2) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return x.toFixed(digits);
}
const secs = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(2)} s`);
const pct = (x, d = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(d)} %`);
const byText = (m) => Object.entries(m || {}).map(([k, v]) => `${k || "?"}: ${fmt(v)}`).join(", ");
function set(id, text) { const el = $(id); if (el && el.textContent !== text) el.textContent = text; }
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function sparkline(id, values) {
  const svg = $(id);
  if (!svg) return;
  const pts = values.map((v) => (v === null ? null : v));
  const finite = pts.filter((v) => v !== null);
  svg.replaceChildren();
  if (finite.length < 2) return;
  const w = svg.clientWidth || 150, h = svg.clientHeight || 28;
  const max = Math.max(...finite, 1e-9), min = Math.min(0, ...finite);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", pts.map((v, i) => (v === null ? null : `${(i / (pts.length - 1)) * w},${h - 2 - ((v - min) / (max - min || 1)) * (h - 4)}`)).filter(Boolean).join(" "));
  svg.appendChild(line);
}

function renderService(s, recentS) {
  set("recent-s", fmt(Math.round(recentS)));
  set("svc-streams-open", fmt(s.streams_open));
  set("svc-accepted", fmt(s.accepted));
  set("svc-refused", fmt(s.refused));
  set("svc-refused-by", byText(s.refused_by));
  set("svc-finals", fmt(s.finals));
  set("svc-lost", fmt(s.lost));
  set("svc-lost-by", byText(s.lost_by));
  set("svc-p50", secs(s.latency.p50));
  set("svc-p95", secs(s.latency.p95));
  set("svc-recent-p50", secs(s.latency_recent.p50));
  set("svc-recent-p95", secs(s.latency_recent.p95));
  const queue = Object.values(s.queue || {}).reduce((a, b) => a + b, 0);
  set("svc-queue", fmt(queue));
  set("svc-queue-by", byText(s.queue));
  set("svc-rtf", fmt(s.rtf_p50, 3));
  set("svc-recent-rtf", fmt(s.rtf_recent_p50, 3));
  set("svc-cpu", pct(s.cpu, 0));
  set("svc-memory", s.memory_bytes === null ? "–" : `${(s.memory_bytes / 1048576).toFixed(0)} MiB`);
}

function renderVariants(variants, deploy) {
  const body = $("variant-rows");
  const names = new Set([...Object.keys(variants), ...Object.keys((deploy && deploy.variants) || {})]);
  const rows = [];
  for (const name of [...names].sort()) {
    const v = variants[name] || {};
    const d = (deploy && deploy.variants && deploy.variants[name]) || {};
    const lat = v.latency || {};
    const cells = {
      variant: name, role: d.role || (v.roles || []).join(", ") || "–", weight: d.weight === undefined ? "–" : pct(d.weight, 0),
      streams: fmt(v.streams), open: fmt(v.streams_open), finals: fmt(v.finals), lost: fmt(v.lost),
      latency: `${secs(lat.p50)} / ${secs(lat.p95)}`,
      empty_rate: v.empty_rate === undefined ? "–" : `${pct(v.empty_rate)} (recent ${pct(v.empty_rate_recent)})`,
      avg_logprob: fmt(v.avg_logprob, 3), no_speech_prob: fmt(v.no_speech_prob, 3), guard_drops: fmt(v.guard_drops),
      rms_dbfs: v.rms_dbfs === null || v.rms_dbfs === undefined ? "–" : `${v.rms_dbfs.toFixed(1)} dBFS`,
      speech_ratio: fmt(v.speech_ratio, 2), sample_rates: byText(v.sample_rates), feedback_wer: pct(v.feedback_wer),
    };
    const tr = el("tr", { "data-variant": name });
    for (const [field, text] of Object.entries(cells)) tr.appendChild(el("td", { "data-field": field }, text));
    rows.push(tr);
  }
  body.replaceChildren(...rows);
}

function renderDeploy(d) {
  $("deploy-none").hidden = !!d;
  $("deploy-body").hidden = !d;
  if (!d) return;
  set("dep-mode", d.mode);
  set("dep-state", d.state);
  set("dep-step", String(d.step));
  $("dep-active-wrap").hidden = d.mode !== "bluegreen";
  set("dep-active", d.active || "");
  set("dep-paused", d.paused ? "paused" : "running");
  // Only the mode is checked here; the server says why an action does not apply now.
  const canary = d.mode === "canary", single = d.mode === "single";
  const enable = { promote: canary || d.mode === "shadow", rollback: !single, pause: canary && !d.paused, resume: canary && d.paused, switch: d.mode === "bluegreen" };
  for (const [name, on] of Object.entries(enable)) document.querySelector(`[data-action="${name}"]`).disabled = !on;
  const sel = $("switch-to");
  const names = Object.keys(d.variants);
  if (sel.options.length !== names.length) sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  // After a rollback or promotion the new window has no gates yet: the last decision's stay shown.
  let gates = (d.window && d.window.gates) || [];
  const decided = [...(d.history || [])].reverse().find((c) => (c.gates || []).length);
  const last = !gates.length && decided;
  if (last) gates = decided.gates;
  set("gates-title", last ? `Gates of the last ${decided.action} (${new Date(decided.at * 1000).toLocaleTimeString()})` : "Gates (current step)");
  $("gate-rows").replaceChildren(...gates.map((g) => {
    const tr = el("tr", { "data-gate": g.name });
    const verdict = g.passed === null ? "waiting" : g.held ? "hold" : g.passed ? "pass" : "fail";
    for (const [text, cls] of [[g.name], [verdict, verdict === "waiting" ? "hold" : verdict], [fmt(g.candidate, 3)], [fmt(g.primary, 3)], [fmt(g.value, 3)], [fmt(g.threshold, 3)], [g.detail || "", "text"]]) {
      tr.appendChild(el("td", cls ? { class: cls } : {}, text));
    }
    return tr;
  }));
  renderReplicas(d.replication);
  const hist = (d.history || []).slice(-30).reverse();
  $("history").replaceChildren(...hist.map((c) => el("li", {}, `${new Date(c.at * 1000).toLocaleTimeString()} ${c.action}: ${c.from_state} → ${c.to_state}, weights ${byText(c.weights)} (${c.reason})`)));
}

// Replicas sharing the deployment (PostgreSQL): the deployment above is theirs as a whole (the
// leader's gate figures on every replica's evidence); each row is one replica's heartbeat.
function renderReplicas(r) {
  $("replicas-wrap").hidden = !r;
  if (!r) return;
  const sync = r.synced ? "in sync" : `store unreachable since ${new Date(r.unsynced_since * 1000).toLocaleTimeString()}: ${r.error}`;
  set("replicas-facts", `this page: ${r.replica} · leader: ${r.leader_name || "none"} · version ${r.version} · ${sync}`);
  $("replica-rows").replaceChildren(...(r.replicas || []).map((x) => {
    const tr = el("tr", { "data-replica": x.replica, class: x.alive ? "" : "gone" });
    const role = x.alive ? (x.replica === r.leader_name ? "leader" : "replica") : "gone";
    for (const text of [x.replica, x.url, String(x.pid), role, String(x.streams), String(x.finals), String(x.version), `${x.seen_s_ago} s ago`]) {
      tr.appendChild(el("td", {}, text));
    }
    return tr;
  }));
}

function histogram(h) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 40");
  svg.setAttribute("preserveAspectRatio", "none");
  const n = h.labels.length;
  if (!n) return svg;
  const top = Math.max(...h.baseline, ...h.current, 1e-9);
  const w = 100 / n;
  h.labels.forEach((label, i) => {
    for (const [side, dx, cls] of [["baseline", 0, "base"], ["current", w / 2, "cur"]]) {
      const r = document.createElementNS(SVG, "rect");
      const hh = (h[side][i] / top) * 38;
      r.setAttribute("x", i * w + dx); r.setAttribute("width", w / 2 - 0.3);
      r.setAttribute("y", 40 - hh); r.setAttribute("height", hh); r.setAttribute("class", cls);
      const t = document.createElementNS(SVG, "title");
      t.textContent = `${label}: ${side} ${(100 * h[side][i]).toFixed(0)} %`;
      r.appendChild(t);
      svg.appendChild(r);
    }
  });
  return svg;
}

function conceptLine(c) {
  if (!c) return "accuracy: no segment yet";
  if (c.source === "feedback") {
    const base = c.baseline_wer === null ? "no baseline WER (the baseline had no references)" : `baseline ${pct(c.baseline_wer)}, alert above ${pct(c.threshold)}`;
    return `accuracy from human feedback: WER ${pct(c.wer)} over the last ${c.words} words (${c.items} references); ${base}${c.alert ? " — ALERT" : ""}`;
  }
  const which = c.stand_ins.length ? `drifted: ${c.stand_ins.join(", ")} — ALERT` : "none drifted";
  return `accuracy stand-in: output confidence (avg logprob, word probability, no-speech probability, empty finals, guard drops), ${c.words} feedback words so far; ${which}`;
}

// The estimated WER over time: the estimate as a line inside its interval as a band.
function qualityChart(history) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "quality-chart");
  const t0 = history[0][0], t1 = history[history.length - 1][0];
  const top = Math.max(...history.map((h) => h[3]), 1e-9);
  const x = (t) => (t1 > t0 ? ((t - t0) / (t1 - t0)) * 100 : 0);
  const y = (v) => 30 - (v / top) * 28;
  const band = history.map((h) => `${x(h[0])},${y(h[3])}`).concat(history.slice().reverse().map((h) => `${x(h[0])},${y(h[2])}`));
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", band.join(" "));
  area.setAttribute("class", "band");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", history.map((h) => `${x(h[0])},${y(h[1])}`).join(" "));
  line.setAttribute("class", "estimate");
  svg.append(area, line);
  return svg;
}

function renderDrift(drift) {
  $("drift-none").hidden = !!drift;
  $("drift-body").hidden = !drift;
  if (!drift) return 0;
  set("drift-window", fmt(drift.window_segments));
  set("drift-min", fmt(drift.min_segments));
  let alerts = 0;
  const cards = Object.entries(drift.variants).map(([name, v]) => {
    const card = el("div", { class: "variant-drift", "data-variant": name });
    card.appendChild(el("h3", {}, name));
    card.appendChild(el("p", { class: `concept ${v.concept && v.concept.alert ? "fail" : ""}`, "data-source": v.concept ? v.concept.source : "" }, conceptLine(v.concept)));
    if (v.quality) {
      const q = v.quality, c = q.calibration;
      const line = q.estimated_wer === null
        ? `estimated WER: not yet (fewer than ${fmt(drift.min_segments)} segments)`
        : `estimated WER ${pct(q.estimated_wer)} (${Math.round(q.level * 100)} %: ${pct(q.low)}–${pct(q.high)}) over ${q.segments} segments, no references`;
      const p = el("p", { class: "quality", "data-estimated": q.estimated_wer === null ? "" : String(q.estimated_wer) }, `${line}; calibration ${c.version} (${c.source}, ${c.files} files)`);
      if ((q.history || []).length > 1) p.appendChild(qualityChart(q.history));
      card.appendChild(p);
    }
    if (v.baseline && !v.baseline.judged) {
      card.appendChild(el("p", { class: "baseline-small hold", "data-judged": "false" }, `${v.baseline.reason}: levels, confidences and other quantities are shown, not judged`));
    }
    const grid = el("div", { class: "features" });
    const hists = (drift.histograms || {})[name] || {};
    for (const [feature, f] of Object.entries(v.features)) {
      if (f.alert) alerts += 1;
      const box = el("div", { class: `feature${f.alert ? " alert" : ""}`, "data-feature": feature, "data-alert": String(f.alert) });
      box.appendChild(el("span", { class: "name" }, `${feature} `));
      box.appendChild(el("span", { class: "muted" }, f.stage));
      box.appendChild(el("span", { class: "score" }, `${fmt(f.score, 3)} / ${fmt(f.threshold, 3)}${f.alert ? " ALERT" : f.judged === false ? " (not judged)" : ""} · n ${f.n}`));
      if (hists[feature]) box.appendChild(histogram(hists[feature]));
      grid.appendChild(box);
    }
    card.appendChild(grid);
    return card;
  });
  $("drift-variants").replaceChildren(...cards);
  const list = (drift.alerts || []).slice().reverse();
  $("alerts").replaceChildren(...list.map((a) => el("li", { class: a.raised ? "fail" : "pass" },
    `${new Date(a.time * 1000).toLocaleTimeString()} ${a.variant} ${a.stage}.${a.feature} ${a.raised ? "drifted" : "back within baseline"}: score ${fmt(a.score, 3)}, threshold ${fmt(a.threshold, 3)}, window ${a.n}`)));
  return alerts;
}

function curveChart(points, below) {
  // x: share sent to review, y: share of errors caught, both 0..1 in a 100 x 100 box
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", "-2 -2 104 104");
  svg.setAttribute("preserveAspectRatio", "none");
  const diagonal = document.createElementNS(SVG, "line");
  for (const [k, v] of Object.entries({ x1: 0, y1: 100, x2: 100, y2: 0 })) diagonal.setAttribute(k, v);
  svg.appendChild(diagonal);
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.map((p) => `${100 * p.sent},${100 - 100 * p.caught}`).join(" "));
  svg.appendChild(line);
  const at = [...points].reverse().find((p) => p.threshold <= below + 1e-9);
  if (at) {
    const dot = document.createElementNS(SVG, "circle");
    for (const [k, v] of Object.entries({ cx: 100 * at.sent, cy: 100 - 100 * at.caught, r: 2.2 })) dot.setAttribute(k, v);
    svg.appendChild(dot);
  }
  return { svg, at };
}

function renderReview(r) {
  $("review-none").hidden = !!r;
  $("review-body").hidden = !r;
  if (!r) return;
  const f = r.figures || {};
  set("rv-level", r.level);
  set("rv-queue", fmt(f.queue));
  set("rv-oldest", secs(f.oldest_age_s === undefined ? null : f.oldest_age_s));
  set("rv-done", fmt(f.done));
  set("rv-below", fmt(r.review_below));
  $("rv-variants").replaceChildren(...Object.entries(f.variants || {}).map(([name, v]) => {
    const tr = el("tr", { "data-variant": name });
    for (const text of [name, fmt(v.items), fmt(v.words), pct(v.wer)]) tr.appendChild(el("td", {}, text));
    return tr;
  }));
  $("rv-stages").replaceChildren(...Object.entries(f.by_stage || {}).map(([name, v]) => {
    const tr = el("tr", { "data-variant": name });
    const per = v.per_100_segments || {};
    for (const text of [name, fmt(v.segments), `${fmt(v.asr_errors)} of ${fmt(v.ref_words)}`, pct(v.asr_wer),
      `${fmt(v.vad_cuts)} / ${fmt(v.vad_cut_segments)}`, fmt(v.vad_audits), `${fmt(v.vad_misses)} / ${fmt(v.vad_miss_items)}`,
      `${fmt(per.asr_errors, 1)} · ${fmt(per.cuts, 1)}`, fmt(per.misses, 1)]) tr.appendChild(el("td", {}, text));
    return tr;
  }));
  $("rv-curves").replaceChildren(...Object.entries(r.curves || {}).map(([name, points]) => {
    const box = el("div", { class: "curve", "data-variant": name });
    const { svg, at } = curveChart(points, r.review_below);
    const where = at ? `at ${fmt(r.review_below)}: ${pct(at.sent, 0)} sent, ${pct(at.caught, 0)} of errors caught, WER ${pct(at.wer_before)} → ${pct(at.wer_after)}` : "";
    box.append(el("div", { class: "name" }, `${name} (${points.length - 1} thresholds) ${where}`), svg);
    return box;
  }));
}

function render(doc) {
  latest = doc;
  renderService(doc.service, doc.recent_s);
  for (const key of ["streams_open", "latency_p95", "cpu", "queue"]) sparkline(`spark-${key}`, doc.series[key] || []);
  renderVariants(doc.variants, doc.deploy);
  renderDeploy(doc.deploy);
  renderReview(doc.review);
  const alerts = renderDrift(doc.drift);
  const badge = $("alert-count");
  badge.textContent = alerts ? `${alerts} drift alert${alerts > 1 ? "s" : ""}` : "no drift alert";
  badge.className = `badge ${alerts ? "bad" : "ok"}`;
  set("updated", `updated ${new Date(doc.time * 1000).toLocaleTimeString()}`);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

const ACTIONS = {
  promote: () => ({ body: { action: "promote" }, text: "Promote the candidate: it takes all new streams and becomes the primary." }),
  rollback: () => ({ body: { action: "rollback" }, text: "Roll back: all new streams go to the primary (the candidate gets none)." }),
  pause: () => ({ body: { action: "pause" }, text: "Pause the canary: its weight stays, gates stop advancing it." }),
  resume: () => ({ body: { action: "resume" }, text: "Resume the canary's steps." }),
  switch: () => { const to = $("switch-to").value; return { body: { action: "switch", active: to }, text: `Switch all new streams to ${to}.` }; },
};

function confirmAction(name) {
  const { body, text } = ACTIONS[name]();
  const dialog = $("confirm");
  set("confirm-text", text);
  dialog.returnValue = "";
  dialog.onclose = async () => {
    if (dialog.returnValue !== "ok") { set("action-result", `${name}: cancelled`); return; }
    const reply = await fetch("/admin/deploy", {
      method: "POST", headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ ...body, reason: "dashboard" }),
    });
    const doc = await reply.json().catch(() => ({}));
    set("action-result", reply.ok ? `${name}: done (${doc.change.from_state} → ${doc.change.to_state})` : `${name} refused: ${doc.message || reply.status}`);
    if (reply.ok && latest) { latest.deploy = doc.deploy; renderDeploy(doc.deploy); renderVariants(latest.variants, doc.deploy); }
  };
  dialog.showModal();
}

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => confirmAction(button.dataset.action));
}

function connect() {
  const source = new EventSource(`/dashboard/events?token=${encodeURIComponent(token)}`);
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge ok"; };
  source.onmessage = (e) => render(JSON.parse(e.data));
  source.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "badge wait"; };
}
connect();
