// The review page: claims one segment at a time, draws its clip (the segment with a margin before
// and after it) as a waveform and plays it with Web Audio (a millisecond timer: clips of 0.3 s are
// common), shows why it is queued and the text of the segments around it, takes the segment's
// transcript and the words heard in the margins; an audit of audio the VAD rejected asks whether
// there is speech in it. An item skipped or given back is not handed straight back: the server
// holds it from this reviewer while anything else waits ([review] release_hold_s), and the page's
// own claims after a skip, a give-back or on its timer ask with take_back false, so it never
// comes back without the reviewer asking ("Take it back") or the hold running out.
"use strict";

const token = new URLSearchParams(location.search).get("token") || "";
const $ = (id) => document.getElementById(id);
let current = null; // the claimed item
let busy = false; // an action (submit, skip, give back) is under way: the timer claims nothing
const putDown = new Map(); // item id -> "skipped" | "gave back", for the messages

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
  if (!text || bad) $("take-back").hidden = true;
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
const name = (item) => (isAudit(item) ? `rejected audio ${item.start.toFixed(2)}–${item.end.toFixed(2)} s` : `segment ${item.segment}`);

function clipOf(item) {
  // Where the segment lies in the clip, in seconds from the clip's start.
  const before = item.margin_before_s || 0, after = item.margin_after_s || 0, length = item.end - item.start;
  return { from: before, to: before + length, total: before + length + after };
}

// -- the clip: fetched with the token, decoded, drawn, played with Web Audio -----------------------

const clip = { ctx: null, buffer: null, peaks: null, source: null, startedAt: 0, offset: 0, playing: false, loading: 0, raf: 0 };
const WAVE = "#2f4a8a", SEGMENT = "#cfdcfb", BACK = "#eef1f5", HEAD = "#d92d20";

function audioContext() {
  if (!clip.ctx) {
    try {
      clip.ctx = new AudioContext({ sampleRate: 16000 }); // the clips' own rate: decoded without resampling
    } catch {
      clip.ctx = new AudioContext();
    }
  }
  return clip.ctx;
}

async function loadClip(item) {
  stopClip();
  Object.assign(clip, { buffer: null, peaks: null, offset: 0 });
  const mine = ++clip.loading;
  $("timer").style.color = "";
  drawClip();
  if (!item.audio_url) {
    $("timer").textContent = "no audio (past the retention period)";
    return;
  }
  try {
    const r = await fetch(item.audio_url, { headers: headers(false) });
    if (!r.ok) throw new Error(`the server answered ${r.status}`);
    const buffer = await audioContext().decodeAudioData(await r.arrayBuffer());
    if (mine !== clip.loading) return; // another item meanwhile
    clip.buffer = buffer;
    drawClip();
  } catch (e) {
    if (mine !== clip.loading) return;
    $("timer").textContent = `cannot load the clip: ${e.message}`;
    $("timer").style.color = "#b42318";
  }
}

function peaks(samples, columns) {
  // The lowest and highest sample under each pixel column, scaled to the clip's peak (at most 20x:
  // a quiet clip looks quiet, not like speech).
  const out = new Float32Array(2 * columns);
  let top = 0;
  for (let i = 0; i < samples.length; i++) top = Math.max(top, Math.abs(samples[i]));
  const gain = Math.min(20, 0.95 / Math.max(top, 1e-6));
  for (let x = 0; x < columns; x++) {
    const a = Math.floor((x * samples.length) / columns), b = Math.max(a + 1, Math.floor(((x + 1) * samples.length) / columns));
    let lo = 0, hi = 0;
    for (let i = a; i < b && i < samples.length; i++) {
      lo = Math.min(lo, samples[i]);
      hi = Math.max(hi, samples[i]);
    }
    out[2 * x] = lo * gain;
    out[2 * x + 1] = hi * gain;
  }
  return out;
}

function clipNow() {
  if (!clip.buffer) return 0;
  if (!clip.playing) return clip.offset;
  return Math.min(clip.buffer.duration, Math.max(0, clip.ctx.currentTime - clip.startedAt));
}

function drawClip() {
  const cv = $("wave"), dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(cv.clientWidth * dpr)), h = Math.max(1, Math.round(cv.clientHeight * dpr));
  if (cv.width !== w || cv.height !== h) {
    cv.width = w;
    cv.height = h;
    clip.peaks = null;
  }
  const g = cv.getContext("2d");
  g.fillStyle = BACK;
  g.fillRect(0, 0, w, h);
  const total = clip.buffer ? clip.buffer.duration : current ? clipOf(current).total : 0;
  if (current && total > 0 && !isAudit(current)) {
    const c = clipOf(current); // the segment the VAD cut
    g.fillStyle = SEGMENT;
    g.fillRect(Math.round((c.from / total) * w), 0, Math.max(1, Math.round(((c.to - c.from) / total) * w)), h);
  }
  if (!clip.buffer) {
    cv.dataset.drawn = "";
    if (!$("timer").style.color) $("timer").textContent = current ? "loading… / – s" : "– / – s";
    return;
  }
  if (!clip.peaks || clip.peaks.length !== 2 * w) clip.peaks = peaks(clip.buffer.getChannelData(0), w);
  g.fillStyle = WAVE;
  for (let x = 0; x < w; x++) {
    const top = Math.round(((1 - clip.peaks[2 * x + 1]) * h) / 2), bottom = Math.round(((1 - clip.peaks[2 * x]) * h) / 2);
    g.fillRect(x, top, 1, Math.max(1, bottom - top));
  }
  const now = clipNow();
  g.fillStyle = HEAD;
  g.fillRect(Math.min(w - 2, Math.round((now / total) * w)), 0, Math.max(2, Math.round(dpr * 2)), h);
  cv.dataset.drawn = "waveform";
  $("timer").textContent = `${now.toFixed(3)} / ${total.toFixed(3)} s`;
}

function tick() {
  drawClip();
  if (clip.playing) clip.raf = requestAnimationFrame(tick);
}

function playClip() {
  if (!clip.buffer || clip.playing) return;
  const ctx = audioContext();
  ctx.resume().catch((e) => say(`cannot play: ${e.message}`, true));
  if (clip.offset >= clip.buffer.duration - 0.001) clip.offset = 0; // at the end: from the start
  const source = ctx.createBufferSource();
  source.buffer = clip.buffer;
  source.connect(ctx.destination);
  source.onended = () => {
    if (clip.source !== source) return;
    Object.assign(clip, { source: null, playing: false, offset: clip.buffer ? clip.buffer.duration : 0 });
    drawClip();
  };
  source.start(0, clip.offset);
  Object.assign(clip, { source, playing: true, startedAt: ctx.currentTime - clip.offset });
  tick();
}

function stopClip() {
  if (clip.source) {
    clip.offset = clipNow();
    clip.source.onended = null;
    try {
      clip.source.stop();
    } catch {
      // not started yet: nothing to stop
    }
  }
  cancelAnimationFrame(clip.raf);
  Object.assign(clip, { source: null, playing: false });
}

function toggle() {
  if (clip.playing) {
    stopClip();
    drawClip();
  } else playClip();
}

function seek(event) {
  if (!clip.buffer) return;
  const box = $("wave").getBoundingClientRect();
  const at = Math.min(1, Math.max(0, (event.clientX - box.left) / box.width));
  const playing = clip.playing;
  stopClip();
  clip.offset = at * clip.buffer.duration;
  if (playing) playClip(); // playing goes on from there; paused stays paused, the playhead moved
  else drawClip();
}

// -- the item ----------------------------------------------------------------------------------

function neighbour(where, n) {
  // The text of the segment before or after this one, when the store has it.
  if (!n) {
    $(`nb-${where}`).textContent = `${where}: (none)`;
    return;
  }
  let said = n.text;
  if (said === null) said = "(not reviewed yet; its AI text is not shown at this level)";
  else if (said === "") said = n.by === "human" ? "(no speech)" : "(the model heard no words)";
  const by = n.by === "human" ? "reviewed" : n.state === "sent" ? "AI, sent without review" : n.by === "ai" ? "AI" : "pending";
  $(`nb-${where}`).textContent = `${where}: segment ${n.segment} (${by}): ${said}`;
}

function show(item) {
  current = item;
  $("item").hidden = !item;
  $("empty").hidden = !!item;
  if (!item) {
    stopClip();
    clip.loading++; // a clip still loading is for an item gone
    return;
  }
  const audit = isAudit(item);
  const parts = [`session ${item.session}`, name(item), item.variant, item.reason_label];
  if (item.confidence !== null) parts.push(`confidence ${item.confidence.toFixed(2)}`);
  parts.push(`${(item.end - item.start).toFixed(3)} s`);
  $("item-meta").textContent = parts.join(" · ");
  $("why").textContent = item.reason_text;
  const c = clipOf(item);
  $("clip-text").textContent = audit
    ? `the whole clip (0–${c.total.toFixed(2)} s) is audio the VAD rejected as no speech`
    : `segment ${c.from.toFixed(2)}–${c.to.toFixed(2)} s of 0–${c.total.toFixed(2)} s`;
  const around = item.neighbours || { before: null, after: null };
  neighbour("before", around.before);
  neighbour("after", around.after);
  $("question").hidden = !audit;
  $("margins-before").hidden = audit;
  $("margins-after").hidden = audit;
  $("text-label").textContent = audit ? "what you hear (none: No speech in this clip)" : "the segment: what was said";
  $("before").value = "";
  $("after").value = "";
  $("text").value = item.draft || "";
  $("text").focus();
  loadClip(item);
}

function claim(takeBack) {
  return api("POST", "/v1/review/claim", { reviewer: reviewer(), take_back: takeBack });
}

function backAgain(item) {
  // The message for an item this reviewer put down before, or "" for any other.
  const how = putDown.get(item.id) || (item.released_by === reviewer() ? "skipped or gave back" : null);
  if (!how) return "";
  return item.back_to_you
    ? `nothing else waiting: ${name(item)}, which you ${how}, is yours again`
    : `${name(item)}, which you ${how} earlier, is yours again`;
}

function confirmNoSpeech(why) {
  // The <dialog> that asks before an empty transcript goes: true when the reviewer confirms.
  return new Promise((resolve) => {
    const d = $("confirm-empty");
    $("confirm-why").textContent = why;
    d.returnValue = "";
    d.addEventListener("close", () => resolve(d.returnValue === "yes"), { once: true });
    d.showModal();
  });
}

async function submit(noSpeech) {
  if (!current || busy) return;
  const item = current;
  const fields = { text: $("text").value, before: $("before").value, after: $("after").value };
  const typed = !isAudit(item) && (fields.before.trim() || fields.after.trim());
  busy = true;
  try {
    if (noSpeech && typed) {
      if (!(await confirmNoSpeech("No speech in this clip: the words typed in the margins are dropped."))) {
        say("not submitted");
        return;
      }
    } else if (!noSpeech && !fields.text.trim()) {
      const why = "The text box is empty: this says nobody spoke in the segment.";
      if (!(await confirmNoSpeech(why))) {
        say("not submitted: type what was said, or confirm that there was no speech");
        return;
      }
    }
    const empty = noSpeech || !fields.text.trim();
    const body = { text: noSpeech ? "" : fields.text, claim: item.claim, reviewer: reviewer() };
    if (!isAudit(item)) Object.assign(body, noSpeech ? { before: "", after: "" } : { before: fields.before, after: fields.after });
    await api("POST", `/v1/review/${item.id}`, body);
    putDown.delete(item.id);
    const done = `${name(item)} of ${item.session} submitted${empty ? " as no speech" : ""}`;
    const next = await claim(true);
    show(next);
    const again = next ? backAgain(next) : "";
    say(again ? `${done} · ${again}` : done);
  } catch (e) {
    say(`not submitted: ${e.message}`, true);
  } finally {
    busy = false;
  }
  refresh();
}

async function release(how) {
  // Skip ("skipped") or give back ("gave back"): the item goes back to the queue, and the next one
  // is claimed without it (take_back false), so it is not handed straight back.
  if (!current || busy) return;
  const item = current;
  busy = true;
  try {
    await api("POST", `/v1/review/${item.id}/release`, { claim: item.claim, reviewer: reviewer() });
    putDown.set(item.id, how);
    show(null);
    const done = how === "skipped" ? `${name(item)} skipped; it goes back to the queue` : `${name(item)} given back`;
    const next = await claim(false);
    if (next) {
      show(next);
      say(`${done} · now ${name(next)}`);
    } else {
      say(`${done}. Nothing else waiting; the item you ${how} is in the queue`);
      $("take-back").hidden = false;
    }
  } catch (e) {
    say(`not ${how === "skipped" ? "skipped" : "given back"}: ${e.message}`, true);
  } finally {
    busy = false;
  }
  refresh();
}

async function takeBack() {
  if (current || busy) return;
  busy = true;
  try {
    const item = await claim(true);
    show(item);
    say(item ? backAgain(item) || `${name(item)} claimed` : "nothing waiting");
  } catch (e) {
    say(`could not claim: ${e.message}`, true);
  } finally {
    busy = false;
  }
  refresh();
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
      else if (putDown.has(i.id)) tr.className = "put-down";
      const waited = Date.now() / 1000 - i.created_at;
      let where = isAudit(i) ? `rejected ${i.start.toFixed(1)} s` : `#${i.segment}`;
      if (tr.className === "put-down") where += ` (you ${putDown.get(i.id)})`;
      for (const v of [`${i.session.slice(0, 8)} ${where}`, i.variant, i.reason_label, i.confidence === null ? "–" : i.confidence.toFixed(2), age(waited)]) {
        const td = document.createElement("td");
        td.textContent = v;
        tr.appendChild(td);
      }
      return tr;
    }));
  } catch (e) {
    say(`cannot read the queue: ${e.message}`, true);
  }
  if (!current && !busy) {
    // Waiting for work: claim what comes, never an item this reviewer just put down.
    busy = true;
    try {
      const item = await claim(false);
      if (item) {
        show(item);
        say(backAgain(item));
      }
    } catch {
      // the next refresh tries again; the queue's error, if any, is said above
    } finally {
      busy = false;
    }
  }
}

$("reviewer").value = localStorage.getItem("speechpipe.reviewer") || "";
$("reviewer").addEventListener("change", () => localStorage.setItem("speechpipe.reviewer", reviewer()));
$("submit").addEventListener("click", () => submit(false));
$("no-speech").addEventListener("click", () => submit(true));
$("play").addEventListener("click", toggle);
$("wave").addEventListener("click", seek);
$("skip").addEventListener("click", () => release("skipped"));
$("release").addEventListener("click", () => release("gave back"));
$("take-back").addEventListener("click", takeBack);
window.addEventListener("resize", () => drawClip());
document.addEventListener("keydown", (e) => {
  if ($("confirm-empty").open) return; // the dialog's own keys: Esc cancels it, Enter presses its button
  if (e.ctrlKey && e.key === "Enter") { e.preventDefault(); submit(false); }
  else if (e.altKey && (e.key === "n" || e.code === "KeyN")) { e.preventDefault(); submit(true); }
  else if (e.ctrlKey && (e.key === " " || e.code === "Space")) { e.preventDefault(); toggle(); }
  else if (e.ctrlKey && e.key === "ArrowRight") { e.preventDefault(); release("skipped"); }
  else if (e.key === "Escape") { e.preventDefault(); release("gave back"); }
});
refresh();
setInterval(refresh, 3000);
