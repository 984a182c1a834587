// Browser client of the speechpipe live server: microphone -> AudioWorklet (20 ms PCM frames)
// -> WebSocket /stream -> partial and final transcripts shown as they arrive.
//
// Access: before it connects, the page asks GET v1/whoami with its token (from `?token=`, typed,
// or kept in sessionStorage for the tab) whether it may stream. A WebSocket refused for its token
// only shows a browser a close 1006 (the 401 is not readable), so the page asks on load, on Start,
// and after any connection that closed before `ready` without an `error`: when a token is needed
// and the one given is missing or wrong, it says so and puts the cursor in the token field.
//
// Stream time begins when the microphone starts, not at the first `ready`: every frame is kept
// from then on (at most MAX_KEPT_S, the oldest dropped and the stream's time 0 moved to the oldest
// kept), and the first `ready` sends what was kept before going on live. So the words said while
// the server was full, or while the connection was being made, are transcribed too.
//
// A server that refuses the stream for now (`server_busy`, `not_ready`, with `retry_after_s`)
// before the page has a session gets a countdown ("Server full: trying again in 5 s"), then the
// page connects again; each refusal counts down its own `retry_after_s`. Stop ends the wait, and
// "Try now" cuts it short.
//
// A connection that breaks under the stream (its server died, or stopped with `end` reason
// `shutdown`) is resumed while the microphone is on (docs/protocol.md, "Resume"): the page
// connects again with `resume` in `start` and sends again the audio no final covers yet, which it
// keeps, then goes on with the microphone. A final of a segment index the page already has is
// ignored, so no segment shows twice.
//
// Review (docs/review.md): a final marked `pending` or `provisional` shows so until its
// `revision` comes; a revision replaces the final's text in place, marked "corrected" (the AI's
// text struck through beside it and in the tooltip) or "confirmed" when the text is the same. A
// revision of a segment whose final has not come yet is kept, and applied when it comes.
"use strict";

const $ = (id) => document.getElementById(id);

// errors after which a resume is tried again (the next replica may serve it).
const RETRYABLE = ["session_open", "resume_unavailable", "shutting_down", "server_busy", "not_ready"];
// errors that refuse a new stream for now: the page waits `retry_after_s`, then connects again.
const WAIT_CODES = ["server_busy", "not_ready"];
// the wait when a refusal gives no usable `retry_after_s`, and the shortest one.
const DEFAULT_WAIT_S = 5;
const MIN_WAIT_S = 1;
// seconds between attempts to resume (the last repeats).
const RESUME_BACKOFF_S = [0.1, 0.25, 0.5, 1, 2];
// attempts in a row without a `ready` before the page gives up (about a minute).
const MAX_ATTEMPTS = 35;
// the most audio kept uncovered by finals: beyond it the oldest goes.
const MAX_KEPT_S = 300;
// messages kept in the debug log (window.speechpipe.log).
const MAX_LOG = 1000;
// where the tab keeps the token it was given.
const TOKEN_KEY = "speechpipe.token";

const state = {
  ws: null, ctx: null, media: null, node: null, ready: false, latencies: [],
  session: null,     // the `session` of the first `ready`: what a resume names
  variant: null,     // the variant that serves the session, and its role (the first `ready`'s)
  role: null,
  rate: 0,           // the stream's sample rate (the AudioContext's)
  sentSamples: 0,    // samples of the stream so far: stream time = sentSamples / rate
  kept: [],          // [{t, buf}]: frames (ArrayBuffer, s16le) no final covers yet, t their stream time
  readyAt: null,     // the stream time of the first `ready`: the audio before it was kept while connecting
  done: new Set(),   // segment indices that got their final (or discarded)
  last: null,        // {segment, end} of the final or discarded with the highest index
  revisions: new Map(), // segment -> `revision` that came before the segment's final
  resume: null,      // the `resume` of the current connection's `start` (null: not a resume)
  resumes: 0,        // how many times the session was resumed
  attempts: 0,       // attempts to connect since the last `ready`
  timer: null,       // the pending reconnection
  wait: null,        // {code, left, timer}: the countdown before connecting again after a refusal
  waits: 0,          // refusals waited out before the first `ready`
  retryAfter: null,  // the `retry_after_s` of the current connection's refusal (seconds, whole)
  starting: false,   // Start was pressed and the page is checking its token or opening the microphone
  stopped: false,    // the user pressed Stop: never resumed from then on
  stopPending: false, // Stop pressed before `ready`: `stop` follows the resent audio
  error: null,       // the code of the current connection's error
  end: null,         // the reason of the current connection's `end`
  connections: 0,    // connections opened for this session
  access: null,      // the last answer of v1/whoami
  log: [],           // {conn, msg} of every message but partials, {conn, sent} of each start (debugging, tests)
};
window.speechpipe = state;

// The status line: `kind` true (or "error") for an error, "waiting" for a countdown.
function status(text, kind = "") {
  $("status-text").textContent = text;
  $("status").className = kind === true ? "error" : kind || "";
}

// -- the token -----------------------------------------------------------------------------------

function givenToken() {
  return $("token").value.trim();
}

// The token of `?token=` (kept for the tab), else the one the tab kept.
function loadToken() {
  const fromUrl = new URLSearchParams(location.search).get("token");
  let token = fromUrl;
  try {
    if (fromUrl) sessionStorage.setItem(TOKEN_KEY, fromUrl);
    else token = sessionStorage.getItem(TOKEN_KEY);
  } catch (err) {
    record({ storage: err.message }); // storage refused (a sandboxed frame): the field alone holds it
  }
  if (token) $("token").value = token;
}

function saveToken() {
  try {
    if (givenToken()) sessionStorage.setItem(TOKEN_KEY, givenToken());
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (err) {
    record({ storage: err.message });
  }
}

// What the server makes of the token now: v1/whoami's answer with `reachable: true`, or
// `{reachable: false, reason}`. A server without the route (an older one) lets the page try.
async function checkAccess() {
  const token = givenToken();
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  let answer;
  try {
    const r = await fetch("v1/whoami", { headers, cache: "no-store" });
    if (r.status === 404) return { reachable: true, stream: true, unknown: true, token };
    if (!r.ok) return { reachable: false, reason: `HTTP ${r.status}` };
    answer = await r.json();
  } catch (err) {
    return { reachable: false, reason: err.message };
  }
  state.access = answer;
  return { reachable: true, token, ...answer };
}

// Shows what `access` (checkAccess's answer) means; true when the page may stream.
function showAccess(access) {
  if (!access.reachable) {
    status(`Cannot reach the server (${access.reason}).`, true);
    return false;
  }
  if (access.stream) {
    $("token-help").hidden = true;
    $("token-box").classList.remove("needed");
    return true;
  }
  let text = "This server needs a stream token: paste it here.";
  if (access.token && access.authenticated) {
    text = `This token (${access.principal}) may not stream: paste a stream token here.`;
  } else if (access.token) {
    text = "This token is not accepted: paste the server's stream token here.";
  }
  $("token-help").textContent = text;
  $("token-help").hidden = false;
  $("token-box").classList.add("needed");
  status("", true); // the message stands beside the field it is about
  $("token").focus();
  return false;
}

// A token typed (or pasted) while nothing runs is checked at once; during a stream it is only
// kept, for the next connection (a resume), and its status line is left alone.
async function onTokenChanged() {
  saveToken();
  const idle = () => !state.media && !state.ws && !state.wait && !state.starting;
  if (!idle()) return;
  const access = await checkAccess();
  if (idle() && showAccess(access) && access.token) status("Token accepted: press Start.");
}

// -- the audio no final covers yet ---------------------------------------------------------------

function keep(buf) {
  const t = state.sentSamples / state.rate;
  state.kept.push({ t, buf });
  state.sentSamples += buf.byteLength / 2;
  const now = state.sentSamples / state.rate;
  let drop = 0;
  while (drop < state.kept.length && now - state.kept[drop].t > MAX_KEPT_S) drop++;
  if (drop) state.kept.splice(0, drop);
}

function keptFrom() {
  return state.kept.length ? state.kept[0].t : state.sentSamples / state.rate;
}

function covered(untilS) {
  let drop = 0;
  while (drop < state.kept.length) {
    const f = state.kept[drop];
    if (f.t + f.buf.byteLength / 2 / state.rate > untilS) break;
    drop++;
  }
  if (drop) state.kept.splice(0, drop);
}

function keptSince(fromS) {
  const out = [];
  for (const f of state.kept) {
    const skip = Math.max(0, Math.round((fromS - f.t) * state.rate)) * 2;
    if (skip < f.buf.byteLength) out.push(skip ? f.buf.slice(skip) : f.buf);
  }
  return out;
}

// Before the first `ready`: the stream's time 0 becomes the oldest frame still kept (a long wait
// dropped the ones before it), since the server counts from the first sample it gets.
function rebase() {
  if (!state.kept.length || state.kept[0].t === 0) return;
  const shift = Math.round(state.kept[0].t * state.rate);
  for (const f of state.kept) f.t -= shift / state.rate;
  state.sentSamples -= shift;
}

// -- messages ------------------------------------------------------------------------------------

function onMessage(msg) {
  if (msg.type !== "partial") record({ conn: state.connections, msg });
  switch (msg.type) {
    case "ready":
      onReady(msg);
      break;
    case "speech_start":
      if (!state.done.has(msg.segment)) showSpeechStart(msg.segment);
      break;
    case "partial":
      if (!state.done.has(msg.segment)) showPartial(msg);
      break;
    case "discarded":
      if (!outcome(msg)) break;
      segmentLine(msg.segment).remove();
      break;
    case "final":
      if (outcome(msg)) onFinal(msg);
      break;
    case "revision":
      onRevision(msg);
      break;
    case "error":
      state.error = msg.code;
      if (state.session === null && WAIT_CODES.includes(msg.code)) {
        state.retryAfter = waitSeconds(msg.retry_after_s); // counted down once the connection closes
        break;
      }
      if (retryable(msg.code)) break; // tried again once the connection closes
      status(`Server error ${msg.code}: ${msg.message}`, true);
      break;
    case "end":
      state.end = msg.reason;
      if (state.error === null) status(`Stream ended (${msg.reason}).`); // else the error stays shown
      break;
  }
}

function record(entry) {
  state.log.push(entry);
  if (state.log.length > MAX_LOG) state.log.splice(0, state.log.length - MAX_LOG);
}

// A final or discarded: false for a segment index already had (never shown twice).
function outcome(msg) {
  if (state.done.has(msg.segment)) return false;
  state.done.add(msg.segment);
  if (!state.last || msg.segment > state.last.segment) state.last = { segment: msg.segment, end: msg.end };
  covered(msg.end);
  return true;
}

function onFinal(msg) {
  const p = showFinal(msg, state.variant);
  if (Number.isFinite(msg.latency_s)) {
    state.latencies.push(msg.latency_s);
    const sorted = [...state.latencies].sort((a, b) => a - b);
    $("summary").textContent =
      `${sorted.length} final(s); median latency ${sorted[Math.floor((sorted.length - 1) / 2)].toFixed(2)} s`;
  }
  const early = state.revisions.get(msg.segment);
  if (early) {
    state.revisions.delete(msg.segment);
    revise(p, early);
  }
}

// A reviewer's text of a segment: in place when its final is shown, else kept until it is.
function onRevision(msg) {
  if (!Number.isInteger(msg.segment) || msg.segment < 0 || typeof msg.text !== "string") {
    record({ ignored: "a revision without a segment index or a text", msg });
    return;
  }
  const p = finalLine(msg.segment);
  if (p) revise(p, msg);
  else state.revisions.set(msg.segment, msg); // its final has not come yet
}

function retryable(code) {
  return state.session !== null && RETRYABLE.includes(code);
}

// The whole seconds to wait after a refusal that said `retryAfterS`.
function waitSeconds(retryAfterS) {
  if (typeof retryAfterS !== "number" || !Number.isFinite(retryAfterS) || retryAfterS < 0) return DEFAULT_WAIT_S;
  return Math.max(MIN_WAIT_S, Math.ceil(retryAfterS));
}

function onReady(msg) {
  state.ready = true;
  state.attempts = 0;
  if (state.session === null) {
    state.session = msg.session;
    state.variant = msg.variant || null;
    state.role = msg.role || null;
    showServed(msg);
    // What the microphone gave while the page connected (or waited) goes first.
    rebase();
    state.readyAt = state.sentSamples / state.rate;
    for (const f of state.kept) state.ws.send(f.buf);
    status(`Listening (session ${msg.session}, model ${msg.model}).`);
  } else if (state.resume) {
    state.resumes += 1;
    // Lines of segments the old connection had begun are sent again under their own index.
    document.querySelectorAll("#transcript p.partial").forEach((p) => p.remove());
    for (const buf of keptSince(state.resume.from_s)) state.ws.send(buf);
    status(`Resumed session ${state.session} from ${state.resume.from_s.toFixed(2)} s (resumed ${state.resumes} times)`);
  }
  if (state.stopPending) sendStop();
}

function onFrame(buf) {
  if (!state.rate) return;
  keep(buf); // kept before it is sent: a send into a broken connection is sent again
  if (state.ready && state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(buf);
}

// -- connections ---------------------------------------------------------------------------------

function streamUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = givenToken();
  return `${proto}//${location.host}/stream` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect() {
  state.timer = null;
  state.ready = false;
  state.error = state.end = state.retryAfter = null;
  state.resume = null;
  if (state.session !== null) {
    // On from the last segment the page has the outcome of.
    const from = state.last ? state.last.end : 0;
    state.resume = {
      session: state.session,
      from_s: Math.max(from, keptFrom()),
      segment: state.last ? state.last.segment + 1 : 0,
    };
  }
  const start = { type: "start", sample_rate: state.rate, encoding: "pcm_s16le", channels: 1 };
  if (state.resume) start.resume = state.resume;
  const ws = new WebSocket(streamUrl());
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  state.connections += 1;
  record({ conn: state.connections, sent: start });
  ws.onopen = () => {
    ws.send(JSON.stringify(start));
    if (!state.stopped) $("stop").disabled = false;
  };
  ws.onmessage = (ev) => {
    if (ws === state.ws) onMessage(JSON.parse(ev.data));
  };
  ws.onclose = (ev) => {
    if (ws === state.ws) onClose(ev);
  };
}

function onClose(ev) {
  state.ws = null;
  state.ready = false;
  if (shouldWait()) {
    waitThenConnect(state.retryAfter);
    return;
  }
  if (shouldResume()) {
    if (state.attempts < MAX_ATTEMPTS) {
      const delay = RESUME_BACKOFF_S[Math.min(state.attempts, RESUME_BACKOFF_S.length - 1)];
      state.attempts += 1;
      status(`Reconnecting… (resumed ${state.resumes} times)`);
      state.timer = setTimeout(connect, delay * 1000);
      return;
    }
    status(`Connection lost; gave up resuming session ${state.session} after ${state.attempts} attempts.`, true);
  } else if (state.session === null && state.error === null) {
    // Refused in the handshake (a 401 reads as 1006 here) or the server went away: ask why.
    teardown();
    explainClose(ev);
    return;
  } else if (state.session === null && WAIT_CODES.includes(state.error)) {
    status(`Stopped; the server had refused the stream for now (${state.error}).`);
  } else if (state.error !== null && !state.end && retryable(state.error)) {
    status(`Server error ${state.error} (connection closed ${ev.code}).`, true);
  } else if (ev.code !== 1000 && state.error === null) {
    status(`Connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}).`, ev.code !== 1001);
  }
  teardown();
}

async function explainClose(ev) {
  const access = await checkAccess();
  if (!showAccess(access)) return; // why: no token, a wrong one, or no server
  status(`Connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}) before the server answered.`, true);
}

// Waited out: a refusal for now (`server_busy`, `not_ready`) before the first `ready`, while the
// microphone is on.
function shouldWait() {
  return state.session === null && !state.stopped && state.media !== null && WAIT_CODES.includes(state.error);
}

// Resumed: a stream whose connection broke (no `end`, or `end` with reason `shutdown`) while the
// microphone is on, or that was refused for now (a retryable error); never after Stop or an error
// that would come again.
function shouldResume() {
  if (state.session === null || state.stopped || !state.media) return false;
  if (state.error !== null) return retryable(state.error);
  return state.end === null || state.end === "shutdown";
}

// The countdown after a refusal: the status says how long is left, each second; then the page
// connects again. The audio meanwhile is kept (it goes first once `ready` comes).
function waitThenConnect(seconds) {
  state.waits += 1;
  state.wait = { code: state.error, left: seconds, timer: setInterval(tick, 1000) };
  $("retry-now").hidden = false;
  $("stop").disabled = false;
  showWait();

  function tick() {
    state.wait.left -= 1;
    if (state.wait.left <= 0) tryNow();
    else showWait();
  }
}

function showWait() {
  const why = state.wait.code === "not_ready" ? "Server still loading its model" : "Server full";
  status(`${why}: trying again in ${state.wait.left} s`, "waiting");
}

function tryNow() {
  if (state.wait === null) return;
  cancelWait();
  status("Connecting…");
  connect();
}

function cancelWait() {
  if (state.wait !== null) clearInterval(state.wait.timer);
  state.wait = null;
  $("retry-now").hidden = true;
}

// -- controls ------------------------------------------------------------------------------------

async function start() {
  $("start").disabled = true;
  state.starting = true;
  try {
    await open();
  } finally {
    state.starting = false;
  }
}

async function open() {
  saveToken();
  if (!showAccess(await checkAccess())) {
    $("start").disabled = false;
    return;
  }
  try {
    state.media = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    status(`No microphone: ${err.message}`, true);
    $("start").disabled = false;
    return;
  }
  state.ctx = new AudioContext();
  await state.ctx.audioWorklet.addModule("pcm-worklet.js");
  const source = state.ctx.createMediaStreamSource(state.media);
  state.node = new AudioWorkletNode(state.ctx, "pcm-framer");
  const analyser = state.ctx.createAnalyser();
  source.connect(state.node);
  source.connect(analyser);
  meter(analyser);

  // The lines of an earlier session stay, but its segment indices are no longer looked up; what
  // served it is said again by the next `ready`.
  document.querySelectorAll("#transcript p[id]").forEach((p) => p.removeAttribute("id"));
  $("served").replaceChildren();
  Object.assign(state, {
    session: null, variant: null, role: null, rate: state.ctx.sampleRate, sentSamples: 0, kept: [],
    readyAt: null, done: new Set(), last: null, revisions: new Map(), resumes: 0, attempts: 0, waits: 0,
    stopped: false, stopPending: false, connections: 0, log: [],
  });
  state.node.port.onmessage = (ev) => onFrame(ev.data);
  status("Connecting…");
  connect();
}

function stop() {
  $("stop").disabled = true;
  state.stopped = true;
  if (state.wait !== null) {
    // Waiting for a server that was full: nothing was sent, nothing is transcribed.
    cancelWait();
    status("Stopped while waiting for the server; nothing was transcribed.");
    teardown();
    return;
  }
  if (state.timer !== null) {
    // Between two connections: the audio no final covers is not transcribed.
    clearTimeout(state.timer);
    state.timer = null;
    status(`Stopped; the connection was lost (session ${state.session}).`, true);
    teardown();
    return;
  }
  if (state.ws && state.ready && state.ws.readyState === WebSocket.OPEN) sendStop();
  else if (state.ws) state.stopPending = true; // after `ready` (and the audio sent again)
  stopAudio();
}

function sendStop() {
  state.stopPending = false;
  state.ws.send(JSON.stringify({ type: "stop" }));
  status("Finishing…");
}

function stopAudio() {
  if (state.media) state.media.getTracks().forEach((t) => t.stop());
  if (state.ctx) state.ctx.close();
  state.media = state.ctx = state.node = null;
}

function teardown() {
  stopAudio();
  cancelWait();
  if (state.timer !== null) clearTimeout(state.timer);
  state.ws = state.timer = null;
  state.kept = [];
  $("start").disabled = false;
  $("stop").disabled = true;
}

function meter(analyser) {
  const data = new Float32Array(analyser.fftSize);
  const draw = () => {
    if (!state.ctx) { $("level").style.width = "0"; return; }
    analyser.getFloatTimeDomainData(data);
    let sum = 0;
    for (const v of data) sum += v * v;
    const db = 10 * Math.log10(sum / data.length + 1e-12);
    $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) * 100 / 60))}%`;
    requestAnimationFrame(draw);
  };
  draw();
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
$("retry-now").addEventListener("click", tryNow);
$("token").addEventListener("change", onTokenChanged);
$("token").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !$("start").disabled) start();
});
loadToken();
checkAccess().then(showAccess);
