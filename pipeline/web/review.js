// The review page: claims one segment at a time, plays its clip (the segment with a margin before
// and after it), takes the segment's transcript and the words heard in the margins; an audit of
// audio the VAD rejected asks whether there is speech in it.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let current = null; // the claimed item

function headers(json) {
  const h = { Authorization: `Bearer ${token}`, "X-Reviewer": reviewer() };
  if (json) h["Content-Type"] = "application/json";
  return h;
}

function reviewer() {
  return ($("reviewer").value || "reviewer").trim().slice(0, 128) || "reviewer";
}

function say(text, bad) {
  $("message").textContent = text;
  $("message").style.color = bad ? "#b42318" : "";
}

async function api(method, path, body) {
  const r = await fetch(path, { method, headers: headers(body !== undefined), body: body === undefined ? undefined : JSON.stringify(body) });
  if (r.status === 204) return null;
  const doc = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(doc.message || `${r.status}`);
  return doc;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const isAudit = (item) => item.reason === "vad_audit";

function clipOf(item) {
  // Where the segment lies in the clip, in seconds from the clip's start.
  const before = item.margin_before_s || 0, after = item.margin_after_s || 0, length = item.end - item.start;
  return { from: before, to: before + length, total: before + length + after };
}

function show(item) {
  current = item;
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  if (!item) return;
  const conf = item.confidence === null ? "no AI confidence" : `confidence ${item.confidence.toFixed(2)}`;
  const audit = isAudit(item);
  const what = audit ? `rejected audio ${item.start.toFixed(2)}–${item.end.toFixed(2)} s` : `segment ${item.segment}`;
  $("item-meta").textContent = `session ${item.session} · ${what} · ${item.variant} · ${item.reason} · ${conf} · ${(item.end - item.start).toFixed(1)} s`;
  $("player").src = `${item.audio_url}?token=${encodeURIComponent(token)}`;
  const c = clipOf(item);
  $("clip-seg").style.left = `${(100 * c.from) / c.total}%`;
  $("clip-seg").style.width = audit ? "0" : `${(100 * (c.to - c.from)) / c.total}%`;
  $("clip-head").style.left = "0";
  $("clip-text").textContent = audit
    ? `the whole clip (0–${c.total.toFixed(2)} s) is audio the VAD rejected as no speech`
    : `segment ${c.from.toFixed(2)}–${c.to.toFixed(2)} s of 0–${c.total.toFixed(2)} s`;
  $("question").hidden = !audit;
  $("margins-before").hidden = audit;
  $("margins-after").hidden = audit;
  $("text-label").textContent = audit ? "what you hear (empty: no speech)" : "the segment: what was said";
  $("before").value = "";
  $("after").value = "";
  $("text").value = item.draft || "";
  $("text").focus();
}

async function next(keep) {
  // Claim the next item before giving back the one skipped, so that the claim does not pick it again.
  try {
    const item = await api("POST", "/v1/review/claim", { reviewer: reviewer() });
    if (keep) await api("POST", `/v1/review/${keep.id}/release`, { claim: keep.claim });
    show(item);
    if (!item) say("");
  } catch (e) {
    say(`could not claim: ${e.message}`, true);
  }
  refresh();
}

async function submit() {
  if (!current) return;
  const item = current;
  try {
    const body = { text: $("text").value, claim: item.claim, reviewer: reviewer() };
    if (!isAudit(item)) Object.assign(body, { before: $("before").value, after: $("after").value });
    await api("POST", `/v1/review/${item.id}`, body);
    say(`segment ${item.segment} of ${item.session} submitted`);
    await next(null);
  } catch (e) {
    say(`not submitted: ${e.message}`, true);
  }
}

async function release() {
  if (!current) return;
  const item = current;
  try {
    await api("POST", `/v1/review/${item.id}/release`, { claim: item.claim });
    show(null);
    say(`segment ${item.segment} given back`);
  } catch (e) {
    say(`not given back: ${e.message}`, true);
  }
  refresh();
}

function playhead() {
  if (!current) return;
  const total = clipOf(current).total;
  const at = total > 0 ? Math.min(1, $("player").currentTime / total) : 0;
  $("clip-head").style.left = `${100 * at}%`;
}

function toggle() {
  const p = $("player");
  if (p.paused) p.play().catch((e) => say(`cannot play: ${e.message}`, true));
  else p.pause();
}

async function refresh() {
  try {
    const [stats, queue] = await Promise.all([api("GET", "/v1/review/stats"), api("GET", "/v1/review/queue")]);
    $("q-len").textContent = stats.queue;
    $("q-age").textContent = age(stats.oldest_age_s);
    $("q-done").textContent = stats.done;
    $("q-level").textContent = stats.level;
    $("queue").replaceChildren(...queue.items.map((i) => {
      const tr = document.createElement("tr");
      tr.dataset.id = i.id;
      if (current && i.id === current.id) tr.className = "mine";
      else if (i.state === "claimed") tr.className = "claimed";
      const waited = Date.now() / 1000 - i.created_at;
      const where = isAudit(i) ? `rejected ${i.start.toFixed(1)} s` : `#${i.segment}`;
      for (const v of [`${i.session.slice(0, 8)} ${where}`, i.variant, i.reason, i.confidence === null ? "–" : i.confidence.toFixed(2), age(waited)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      return tr;
    }));
  } catch (e) {
    say(`cannot read the queue: ${e.message}`, true);
  }
  if (!current) {
    const item = await api("POST", "/v1/review/claim", { reviewer: reviewer() }).catch(() => null);
    if (item) show(item);
  }
}

$("reviewer").value = localStorage.getItem("speechpipe.reviewer") || "";
$("reviewer").addEventListener("change", () => localStorage.setItem("speechpipe.reviewer", reviewer()));
$("submit").addEventListener("click", submit);
$("player").addEventListener("timeupdate", playhead);
$("play").addEventListener("click", toggle);
$("skip").addEventListener("click", () => next(current));
$("release").addEventListener("click", release);
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey && e.key === "Enter") { e.preventDefault(); submit(); }
  else if (e.ctrlKey && (e.key === " " || e.code === "Space")) { e.preventDefault(); toggle(); }
  else if (e.ctrlKey && e.key === "ArrowRight") { e.preventDefault(); if (current) next(current); }
  else if (e.key === "Escape") { e.preventDefault(); release(); }
});
refresh();
setInterval(refresh, 3000);
