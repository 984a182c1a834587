// speechpipe dashboard: one snapshot a second from /dashboard/events (server-sent events), drawn
// into the page; the time series from /dashboard/history once, then each snapshot's point (charts
// in dashboard-charts.js, uPlot); deploy actions go to POST /admin/deploy after a confirmation.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let latest = null;

// -- one format per kind of figure ----------------------------------------------------------------

const none = (x) => x === null || x === undefined || (typeof x === "number" && Number.isNaN(x));
function fmt(x, digits = 2) {
  if (none(x)) return "–";
  if (typeof x !== "number") return String(x);
  if (Number.isInteger(x)) return String(x);
  return x.toFixed(digits);
}
const secs = (x) => (none(x) ? "–" : `${x.toFixed(2)} s`);
// every rate and share (WER, empty finals, weights, CPU): a percentage with one decimal
const pct = (x, d = 1) => (none(x) ? "–" : `${(100 * x).toFixed(d)} %`);
// a difference of two rates: percentage points, signed
const pp = (x) => (none(x) ? "–" : `${x >= 0 ? "+" : "−"}${Math.abs(100 * x).toFixed(1)} pp`);
const times = (x) => (none(x) ? "–" : `×${x.toFixed(2)}`);
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const byText = (m, f = fmt) => Object.entries(m || {}).map(([k, v]) => `${k || "?"}: ${f(v)}`).join(", ");
function set(id, text) { const e = $(id); if (e && e.textContent !== text) e.textContent = text; }
function el(tag, attrs = {}, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- service and variants -------------------------------------------------------------------------

function renderService(s, recentS) {
  set("recent-s", fmt(Math.round(recentS)));
  for (const e of document.querySelectorAll(".recent-s")) e.textContent = fmt(Math.round(recentS));
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
  set("svc-memory", none(s.memory_bytes) ? "–" : `${(s.memory_bytes / 1048576).toFixed(0)} MiB`);
}

function renderVariants(variants, deploy) {
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
      avg_logprob: fmt(v.avg_logprob, 3), no_speech_prob: pct(v.no_speech_prob), guard_drops: fmt(v.guard_drops),
      rms_dbfs: none(v.rms_dbfs) ? "–" : `${v.rms_dbfs.toFixed(1)} dBFS`,
      speech_ratio: pct(v.speech_ratio, 0), sample_rates: byText(v.sample_rates), feedback_wer: pct(v.feedback_wer),
    };
    const tr = el("tr", { "data-variant": name });
    const sw = el("span", { class: "swatch" });
    sw.style.background = Charts.colourOf(name);
    for (const [field, text] of Object.entries(cells)) {
      const td = el("td", { "data-field": field }, text);
      if (field === "variant") td.prepend(sw);
      tr.appendChild(td);
    }
    rows.push(tr);
  }
  $("variant-rows").replaceChildren(...rows);
}

// -- the deployment -------------------------------------------------------------------------------

// What each action does, and why it cannot apply now ("" when it can).
function refusals(d) {
  // shadow mode promotes and rolls back like a canary (without steps)
  const canary = d.mode === "canary", bluegreen = d.mode === "bluegreen";
  const candidate = Object.entries(d.variants).find(([, v]) => v.role === "candidate" || v.role === "shadow");
  const promoted = d.state === "promoted";
  const single = d.mode === "single" ? "one variant is deployed (mode single)" : "";
  const golden = goldenBlock(d);
  const standby = bluegreen && Object.keys(d.variants).find((k) => d.variants[k].role === "standby");
  const toCandidate = bluegreen && golden && standby === d.golden_set.candidate;
  return {
    promote: single || (bluegreen ? (toCandidate ? golden.why : "") : !candidate ? "nothing to promote: no candidate" : golden ? golden.why : ""),
    rollback: single || (bluegreen ? (d.state === "live" ? "nothing to roll back to: the first variant is still live" : "")
      : ["gating", "refused"].includes(d.state) ? "the candidate takes no traffic" : promoted ? "the candidate was promoted: use Revert promotion" : !["progressing", "shadowing"].includes(d.state) ? `the ${d.mode} is ${d.state.replace("_", " ")} already` : ""),
    revert: single || (bluegreen ? "blue/green goes back with Roll back" : !promoted ? "nothing was promoted" : ""),
    pause: !canary ? "only a canary steps by itself" : d.state !== "progressing" ? `the canary is ${d.state.replace("_", " ")}` : d.paused ? "paused already" : "",
    resume: !canary ? "only a canary steps by itself" : !d.paused ? "the canary is not paused" : "",
    switch: bluegreen ? (toCandidate ? golden.why : "") : "switch is a blue/green action",
  };
}

// Why the golden set keeps the candidate from traffic (null: it does not): still being evaluated,
// or refused by it with the figures.
function goldenBlock(d) {
  if (!d.golden_set) return null;
  const name = d.golden_set.candidate;
  if (!d.golden) return { why: `${name} is being evaluated on the golden set; it takes no traffic until admitted` };
  return d.golden.passed ? null : { why: `${name} was refused by the golden set: WER ${pct(d.golden.candidate_wer)} against ${pct(d.golden.primary_wer)}` };
}

function stepText(d) {
  if (d.mode !== "canary") return d.mode === "bluegreen" ? "–" : "none (no steps)";
  const cand = Object.entries(d.variants).find(([, v]) => v.role === "candidate");
  if (d.state === "gating") return "none yet (golden set first)";
  if (d.state === "refused") return "none (refused by the golden set)";
  if (!cand || d.step < 0) return d.state === "promoted" ? "done (promoted)" : d.state === "reverted" ? "none (reverted)" : `none (${d.state.replace("_", " ")})`;
  const n = (d.steps || []).length;
  return `${pct(cand[1].weight, 0)} (${d.step + 1} of ${n})`;
}

// What must still happen before the canary's step advances (or promotes, at the last step).
function nextText(d, now) {
  const cand = Object.entries(d.variants).find(([, v]) => v.role === "candidate" || v.role === "shadow");
  if (d.mode === "canary" && d.state === "progressing" && cand) {
    const name = cand[0], w = d.window || {};
    const ended = (w.streams || {})[name] || 0;
    const need = Math.max(0, d.step_min_streams - ended);
    const left = Math.max(0, d.step_min_s - (now - w.started_at));
    const last = d.step >= d.steps.length - 1;
    const gates = w.gates || [];
    const failing = gates.filter((g) => g.passed === false).map((g) => g.name);
    const holding = gates.filter((g) => g.held).map((g) => g.name);
    const passing = gates.filter((g) => g.passed === true).length;
    const wants = [];
    if (need) wants.push(`${need} more candidate stream${need > 1 ? "s" : ""} to end (${ended} of ${d.step_min_streams})`);
    if (left > 0) wants.push(`${Math.ceil(left)} s more (a step lasts at least ${d.step_min_s} s)`);
    if (!passing) wants.push("one gate with enough data to pass");
    if (holding.length) wants.push(`${holding.join(", ")} to be sure`);
    const to = last ? `promote ${name}` : `advance to ${pct(d.steps[d.step + 1], 0)}`;
    if (d.paused) return `Paused: nothing advances or rolls back until Resume (then it would need ${wants.join("; ") || "nothing more"}).`;
    if (failing.length) return `${failing.join(", ")} failing: rolls back at the next tick.`;
    return wants.length ? `To ${to}: ${wants.join("; ")}.` : `Ready to ${to} at the next tick.`;
  }
  const lastGolden = [...(d.history || [])].reverse().find((c) => c.action === "golden");
  if (d.state === "gating") return `Evaluating ${cand ? cand[0] : "the candidate"} against the primary on the golden set (${d.golden_set.folder}), off the serving path, before it takes any traffic.`;
  if (d.state === "refused") return `Refused by the golden set: ${lastGolden ? lastGolden.reason.replace(/^refused: /, "") : ""}.`;
  if (d.state === "promoted") return `${Object.keys(d.variants).find((k) => d.variants[k].role === "primary")} was promoted; Revert promotion sends every new stream back to ${d.previous_primary}.`;
  if (d.state === "reverted") return `Reverted: ${d.previous_primary} serves every new stream again; ${cand ? cand[0] : "the candidate"} gets none (promote or set a weight to try it again).`;
  if (d.state === "rolled_back") return `Rolled back: ${cand ? cand[0] : "the candidate"} gets no new streams.`;
  return "";
}

function describe(d) {
  const by = (role) => Object.keys(d.variants).find((k) => d.variants[k].role === role);
  if (d.mode === "canary") return by("candidate") ? `canary of ${by("candidate")} over ${by("primary")}` : `canary (${by("primary")} is the primary)`;
  if (d.mode === "shadow") return by("shadow") ? `shadow: ${by("shadow")} beside ${by("primary")}` : `shadow (${by("primary")} is the primary)`;
  if (d.mode === "bluegreen") return `blue/green: ${by("primary")} live, ${by("standby")} standby`;
  return `single: ${by("primary")}`;
}

// Gate figures in the gate's own unit: seconds and a ratio for latency, rates and their
// differences in % and percentage points, log-probabilities as numbers.
function gateCells(g) {
  if (g.name === "latency_p95_ratio") return [secs(g.candidate), secs(g.primary), times(g.value), times(g.threshold)];
  if (g.name === "logprob_delta") return [fmt(g.candidate, 3), fmt(g.primary, 3), fmt(g.value, 3), `≤ ${fmt(g.threshold, 3)}`];
  if (g.name === "agreement_min") return [pct(g.candidate), "–", pct(g.value), `≥ ${pct(g.threshold)}`];
  return [pct(g.candidate), pct(g.primary), pp(g.value), `≤ ${pp(g.threshold)}`];
}

function renderDeploy(d, now) {
  $("deploy-none").hidden = !!d;
  $("deploy-body").hidden = !d;
  if (!d) return;
  set("dep-what", describe(d));
  set("dep-state", d.state.replace("_", " "));
  set("dep-step", stepText(d));
  $("dep-active-wrap").hidden = d.mode !== "bluegreen";
  set("dep-active", d.active || "");
  set("dep-paused", d.paused ? "paused" : "running");
  set("dep-next", nextText(d, now));
  const why = refusals(d);
  for (const [name, reason] of Object.entries(why)) {
    const b = document.querySelector(`[data-action="${name}"]`);
    b.disabled = !!reason;
    b.title = reason || ACTIONS[name]().text;
  }
  const sel = $("switch-to");
  const names = Object.keys(d.variants).filter((n) => d.mode !== "bluegreen" || ["primary", "standby"].includes(d.variants[n].role));
  if ([...sel.options].map((o) => o.value).join() !== names.join()) sel.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  sel.disabled = !!why.switch;
  // After a rollback or promotion the new window has no gates yet: the last decision's stay shown.
  let gates = (d.window && d.window.gates) || [];
  const decided = [...(d.history || [])].reverse().find((c) => (c.gates || []).length);
  const last = !gates.length && decided;
  if (last) gates = decided.gates;
  set("gates-title", last ? `Gates of the last ${decided.action} (${clock(decided.at)})` : "Gates (current step)");
  const w = d.window || {};
  set("gates-window", gates.length
    ? (last ? "as they were judged at that decision" : `this step's window, since ${clock(w.started_at)}: candidate and primary figures over it (the tables below are since the server started)`)
    : "no gate in this mode, or none judged yet");
  $("gate-rows").closest(".table-wrap").hidden = !gates.length;
  $("gate-rows").replaceChildren(...gates.map((g) => {
    const tr = el("tr", { "data-gate": g.name });
    const verdict = g.passed === null ? (g.held ? "hold" : "waiting") : g.passed ? "pass" : "fail";
    const cls = verdict === "waiting" ? "hold" : verdict;
    const [c, p, v, lim] = gateCells(g);
    for (const [text, k] of [[g.name], [verdict, cls], [c], [p], [v], [lim], [g.detail || "", "text"]]) tr.appendChild(el("td", k ? { class: k } : {}, text));
    return tr;
  }));
  renderReplicas(d.replication);
  const hist = (d.history || []).slice(-30).reverse();
  $("history").replaceChildren(...hist.map((c) => el("li", { "data-action": c.action, class: `h-${c.action}` },
    `${clock(c.at)} ${c.action.replace("_", " ")}: ${c.from_state.replace("_", " ") || "–"} → ${c.to_state.replace("_", " ")}, shares ${byText(c.weights, (x) => pct(x, 0))} (${c.reason})`)));
  Charts.setMarks(d.history);
}

// Replicas sharing the deployment (PostgreSQL): the deployment above is theirs as a whole (the
// leader's gate figures on every replica's evidence); each row is one replica's heartbeat.
function renderReplicas(r) {
  $("replicas-wrap").hidden = !r;
  if (!r) return;
  const sync = r.synced ? "in sync" : `store unreachable since ${clock(r.unsynced_since)}: ${r.error}`;
  set("replicas-facts", `this page: ${r.replica} · leader: ${r.leader_name || "none"} · version ${r.version} · ${sync}`);
  $("replica-rows").replaceChildren(...(r.replicas || []).map((x) => {
    const tr = el("tr", { "data-replica": x.replica, class: x.alive ? "" : "gone" });
    const role = x.alive ? (x.replica === r.leader_name ? "leader" : "replica") : "gone";
    for (const text of [x.replica, x.url, String(x.pid), role, String(x.streams), String(x.finals), String(x.version), `${x.seen_s_ago} s ago`]) tr.appendChild(el("td", {}, text));
    return tr;
  }));
}

// -- drift ----------------------------------------------------------------------------------------

// Names people read, and the unit of each quantity's axis.
const FEATURES = {
  duration_s: ["segment duration", "s"], rms_dbfs: ["speech level (RMS)", "dBFS"], peak_dbfs: ["peak level", "dBFS"],
  clipping_ratio: ["clipped samples", "share of samples"], snr_db: ["signal-to-noise ratio", "dB"],
  low_snr: ["segments under 25 dB SNR", ""], pause_dbfs: ["level of the pause before speech", "dBFS"],
  bandwidth_hz: ["audio bandwidth", "Hz"], speech_ratio: ["VAD speech share of the segment", "share"],
  sample_rate: ["input sample rate", "Hz"], avg_logprob: ["ASR mean log-probability", "log-probability"],
  no_speech_prob: ["ASR no-speech probability", "probability"], word_probability: ["ASR word probability", "probability"],
  words_per_s: ["speaking rate", "words per second"], empty: ["empty finals", ""], guard_drops: ["hallucination-guard drops", ""],
  compression_ratio: ["ASR text compression ratio", "ratio"],
};
const featureName = (f) => (FEATURES[f] ? FEATURES[f][0] : f.replaceAll("_", " "));
const STATISTIC = { numeric: "distance in baseline spreads", rate: "difference of the rates", categorical: "Jensen-Shannon distance" };

// A variant takes no traffic: weight 0, nothing open, no shadow role. Its window is old: shown
// dimmed, its alerts neither counted nor listed.
function idle(name, deploy, variants) {
  const d = deploy && deploy.variants && deploy.variants[name];
  if (!d) return false;
  const open = ((variants || {})[name] || {}).streams_open || 0;
  return d.weight === 0 && d.role !== "shadow" && open === 0;
}

const histCharts = new Map();

function featureBox(name, feature, f, h) {
  const box = el("div", { class: `feature${f.alert ? " alert" : ""}`, "data-feature": feature, "data-alert": String(f.alert) });
  const head = el("div", { class: "fhead" });
  head.append(el("span", { class: "name", title: feature }, featureName(feature)), el("span", { class: "muted" }, ` ${f.stage}`));
  box.appendChild(head);
  const kind = h ? h.kind : "numeric";
  const verdict = f.alert ? "ALERT" : f.judged === false ? "not judged (baseline too small)" : "within";
  box.appendChild(el("div", { class: "score" }, `drift score ${fmt(f.score, 3)} · alert above ${fmt(f.threshold, 3)} · ${verdict}`));
  box.appendChild(el("div", { class: "muted stat" }, `${STATISTIC[kind] || "score"}, over the last ${f.n} segments`));
  if (!h || !h.labels.length) return box;
  if (kind === "rate") {
    // a 0/1 feature: the share of segments where it is 1, baseline against the window
    const one = h.labels.indexOf("1");
    const rates = el("div", { class: "rates" });
    for (const [side, cls, label] of [["baseline", "base", "baseline"], ["current", "cur", "recent"]]) {
      const share = one < 0 ? 0 : h[side][one];
      const row = el("div", { class: "rate-row" });
      const bar = el("span", { class: `bar ${cls}` });
      bar.style.width = `${Math.max(0.5, 100 * share)}%`;
      const track = el("span", { class: "track" });
      track.appendChild(bar);
      row.append(el("span", { class: "rate-label" }, label), track, el("span", { class: "rate-value" }, pct(share)));
      rates.appendChild(row);
    }
    box.appendChild(rates);
  } else if (kind === "categorical") {
    const rows = el("div", { class: "rates" });
    h.labels.forEach((label, i) => {
      const row = el("div", { class: "rate-row" });
      row.appendChild(el("span", { class: "rate-label" }, `${label} ${FEATURES[feature] ? FEATURES[feature][1] : ""}`));
      const track = el("span", { class: "track" });
      for (const [side, cls] of [["baseline", "base"], ["current", "cur"]]) {
        const bar = el("span", { class: `bar half ${cls}`, title: `${side === "current" ? "recent" : side} ${pct(h[side][i])}` });
        bar.style.width = `${Math.max(0.5, 100 * h[side][i])}%`;
        track.appendChild(bar);
      }
      row.append(track, el("span", { class: "rate-value" }, `${pct(h.baseline[i], 0)} → ${pct(h.current[i], 0)}`));
      rows.appendChild(row);
    });
    box.appendChild(rows);
  } else {
    const plot = el("div", { class: "hist" });
    box.appendChild(plot);
    box._draw = () => {
      const key = `${name}/${feature}`;
      histCharts.set(key, Charts.histogram(plot, h, FEATURES[feature] ? FEATURES[feature][1] : "", null));
    };
  }
  return box;
}

function conceptLine(c) {
  if (!c) return "accuracy: no segment yet";
  if (c.source === "feedback") {
    const base = none(c.baseline_wer) ? "no baseline WER (the baseline had no references)" : `baseline ${pct(c.baseline_wer)}, alert above ${pct(c.threshold)}`;
    return `accuracy from people: WER ${pct(c.wer)} over the last ${c.words} words (${c.items} references); ${base}${c.alert ? " — ALERT" : ""}`;
  }
  const which = c.stand_ins.length ? `drifted: ${c.stand_ins.map(featureName).join(", ")} — ALERT` : "none drifted";
  return `accuracy stand-in: output confidence (mean log-probability, word probability, no-speech probability, empty finals, guard drops), ${c.words} words from people so far; ${which}`;
}

let driftKey = "";

function renderDrift(drift, deploy, variants) {
  $("drift-none").hidden = !!drift;
  $("drift-body").hidden = !drift;
  if (!drift) return 0;
  set("drift-window", fmt(drift.window_segments));
  set("drift-min", fmt(drift.min_segments));
  const idleNames = new Set(Object.keys(drift.variants).filter((n) => idle(n, deploy, variants)));
  let alerts = 0;
  // Redrawn only when something shown changed (the histograms are charts, not text).
  const key = JSON.stringify([drift.variants, drift.histograms, [...idleNames]]);
  if (key !== driftKey) {
    driftKey = key;
    const boxes = [];
    const cards = Object.entries(drift.variants).map(([name, v]) => {
      const quiet = idleNames.has(name);
      const card = el("div", { class: `variant-drift${quiet ? " idle" : ""}`, "data-variant": name, "data-idle": String(quiet) });
      const title = el("h3", {}, name);
      if (quiet) title.appendChild(el("small", { class: "muted" }, " · no traffic (weight 0): its last window is shown, not judged, no alert"));
      card.appendChild(title);
      card.appendChild(el("p", { class: `concept ${!quiet && v.concept && v.concept.alert ? "fail" : ""}`, "data-source": v.concept ? v.concept.source : "" }, conceptLine(v.concept)));
      if (v.quality) {
        const q = v.quality, c = q.calibration;
        const line = none(q.estimated_wer)
          ? `estimated WER: not yet (fewer than ${fmt(drift.min_segments)} segments)`
          : `estimated WER ${pct(q.estimated_wer)} (${Math.round(q.level * 100)} % interval ${pct(q.low)}–${pct(q.high)}) over ${q.segments} segments, without references`;
        card.appendChild(el("p", { class: "quality", "data-estimated": none(q.estimated_wer) ? "" : String(q.estimated_wer) }, `${line}; calibration ${c.version} (${c.source}, ${c.files} files); over time in the WER chart above`));
      }
      if (v.baseline && !v.baseline.judged) {
        card.appendChild(el("p", { class: "baseline-small hold", "data-judged": "false" }, `${v.baseline.reason}: levels, confidences and other quantities are shown, not judged`));
      }
      const grid = el("div", { class: "features" });
      const hists = (drift.histograms || {})[name] || {};
      for (const [feature, f] of Object.entries(v.features)) {
        const box = featureBox(name, feature, quiet ? { ...f, alert: false } : f, hists[feature]);
        grid.appendChild(box);
        boxes.push(box);
      }
      card.appendChild(grid);
      return card;
    });
    for (const c of histCharts.values()) if (c) c.plot.destroy();
    histCharts.clear();
    $("drift-variants").replaceChildren(...cards);
    for (const b of boxes) if (b._draw) b._draw();
  }
  for (const [name, v] of Object.entries(drift.variants)) {
    if (idleNames.has(name)) continue;
    for (const f of Object.values(v.features)) if (f.alert) alerts += 1;
  }
  renderAlerts(drift, idleNames);
  return alerts;
}

// The alert log grouped by variant and feature: one line each, how often it drifted and came
// back, when, and where it stands now; none for an idle variant.
function renderAlerts(drift, idleNames) {
  const groups = new Map();
  for (const a of drift.alerts || []) {
    if (idleNames.has(a.variant)) continue;
    const k = `${a.variant}/${a.feature}`;
    const g = groups.get(k) || { variant: a.variant, feature: a.feature, stage: a.stage, raised: 0, cleared: 0, first: a.time, last: a };
    if (a.raised) g.raised += 1; else g.cleared += 1;
    g.last = a;
    groups.set(k, g);
  }
  const list = [...groups.values()].sort((a, b) => b.last.time - a.last.time);
  $("alerts-none").hidden = list.length > 0;
  $("alerts").replaceChildren(...list.map((g) => {
    const now = ((drift.variants[g.variant] || {}).features || {})[g.feature];
    const on = now ? now.alert : g.last.raised;
    const state = on ? `drifted now: score ${fmt(now ? now.score : g.last.score, 3)}, alert above ${fmt(now ? now.threshold : g.last.threshold, 3)}` : `back within the baseline since ${clock(g.last.time)}`;
    const times_ = `drifted ${g.raised}×${g.cleared ? `, came back ${g.cleared}×` : ""} since ${clock(g.first)}`;
    return el("li", { class: on ? "fail" : "pass", "data-variant": g.variant, "data-feature": g.feature }, `${g.variant} · ${featureName(g.feature)} (${g.stage}): ${times_}; ${state}`);
  }));
}

// -- review ---------------------------------------------------------------------------------------

const curveCharts = new Map();

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
  const any = Object.keys(f.variants || {}).length > 0;
  $("rv-empty").hidden = any;
  $("rv-figures").hidden = !any;
  if (!any) return;
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
  const box = $("rv-curves");
  for (const [name, points] of Object.entries(r.curves || {})) {
    let card = box.querySelector(`.curve[data-variant="${name}"]`);
    if (!card) {
      card = el("div", { class: "curve", "data-variant": name });
      card.append(el("div", { class: "name" }), el("div", { class: "plot" }));
      box.appendChild(card);
    }
    const at = [...points].reverse().find((p) => p.threshold <= r.review_below + 1e-9);
    const where = at ? `at review_below ${fmt(r.review_below)}: ${pct(at.sent, 0)} of segments sent, ${pct(at.caught, 0)} of errors caught, WER ${pct(at.wer_before)} → ${pct(at.wer_after)}` : "";
    card.querySelector(".name").textContent = `${name} (${points.length - 1} thresholds) ${where}`;
    curveCharts.set(name, Charts.curve(card.querySelector(".plot"), points, at, curveCharts.get(name)));
  }
}

// -- the whole snapshot ---------------------------------------------------------------------------

function render(doc) {
  latest = doc;
  renderService(doc.service, doc.recent_s);
  for (const e of document.querySelectorAll(".human-s")) e.textContent = fmt(Math.round(doc.human_s || 300));
  renderVariants(doc.variants, doc.deploy);
  renderDeploy(doc.deploy, doc.time);
  renderReview(doc.review);
  const alerts = renderDrift(doc.drift, doc.deploy, doc.variants);
  const badge = $("alert-count");
  badge.textContent = alerts ? `${alerts} drift alert${alerts > 1 ? "s" : ""}` : "no drift alert";
  badge.className = `badge ${alerts ? "bad" : "ok"}`;
  if (historyLoaded) Charts.addPoint(doc.point);
  Charts.renderAll();
  set("updated", `updated ${clock(doc.time)}`);
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

const ACTIONS = {
  promote: () => ({ body: { action: "promote" }, text: "Promote the candidate: it takes all new streams and becomes the primary." }),
  rollback: () => ({ body: { action: "rollback" }, text: "Roll back: all new streams go to the primary (the candidate gets none)." }),
  revert: () => ({ body: { action: "revert" }, text: `Revert the promotion: all new streams go back to ${(latest && latest.deploy && latest.deploy.previous_primary) || "the previous primary"}; open streams finish on theirs.` }),
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
    set("action-result", reply.ok ? `${name}: done (${doc.change.from_state.replace("_", " ")} → ${doc.change.to_state.replace("_", " ")})` : `${name} refused: ${doc.message || reply.status}`);
    if (reply.ok && latest) {
      latest.deploy = { ...latest.deploy, ...doc.deploy };
      renderDeploy(latest.deploy, Date.now() / 1000);
      renderVariants(latest.variants, latest.deploy);
      Charts.renderAll();
    }
  };
  dialog.showModal();
}

for (const button of document.querySelectorAll("[data-action]")) {
  button.addEventListener("click", () => confirmAction(button.dataset.action));
}
$("range").addEventListener("change", () => Charts.setRange(Number($("range").value)));

let historyLoaded = false;
async function loadHistory() {
  try {
    const r = await fetch("/dashboard/history", { headers: { Authorization: `Bearer ${token}` } });
    if (!r.ok) throw new Error(String(r.status));
    const doc = await r.json();
    Charts.setHistory(doc.columns);
    set("every-s", fmt(doc.every_s));
    historyLoaded = true;
    Charts.renderAll();
  } catch (e) {
    set("every-s", `? (history unavailable: ${e.message})`);
    historyLoaded = true; // the charts start from now
  }
}

function connect() {
  const source = new EventSource(`/dashboard/events?token=${encodeURIComponent(token)}`);
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "badge ok"; };
  source.onmessage = (e) => render(JSON.parse(e.data));
  source.onerror = () => { $("conn").textContent = "reconnecting…"; $("conn").className = "badge wait"; };
}
loadHistory().then(connect);
