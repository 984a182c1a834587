// Browser client of the speechpipe live server: microphone -> AudioWorklet (20 ms PCM frames)
// -> WebSocket /stream -> partial and final transcripts shown as they arrive.
//
// A connection that breaks under the stream (its server died, or stopped with `end` reason
// `shutdown`) is resumed while the microphone is on (docs/protocol.md, "Resume"): the page
// connects again with `resume` in `start` and sends again the audio no final covers yet, which it
// keeps (at most MAX_KEPT_S), then goes on with the microphone. A final of a segment index the
// page already has is ignored, so no segment shows twice.
"use strict";

const $ = (id) => document.getElementById(id);

// errors after which a resume is tried again (the next replica may serve it).
const RETRYABLE = ["session_open", "resume_unavailable", "shutting_down", "server_busy", "not_ready"];
// seconds between attempts to resume (the last repeats).
const RESUME_BACKOFF_S = [0.1, 0.25, 0.5, 1, 2];
// attempts in a row without a `ready` before the page gives up (about a minute).
const MAX_ATTEMPTS = 35;
// the most audio kept uncovered by finals: beyond it the oldest goes.
const MAX_KEPT_S = 300;
// messages kept in the debug log (window.speechpipe.log).
const MAX_LOG = 1000;

const state = {
  ws: null, ctx: null, media: null, node: null, ready: false, latencies: [],
  session: null,     // the `session` of the first `ready`: what a resume names
  rate: 0,           // the stream's sample rate (the AudioContext's)
  sentSamples: 0,    // samples of the stream so far: stream time = sentSamples / rate
  kept: [],          // [{t, buf}]: frames (ArrayBuffer, s16le) no final covers yet, t their stream time
  done: new Set(),   // segment indices that got their final (or discarded)
  last: null,        // {segment, end} of the final or discarded with the highest index
  resume: null,      // the `resume` of the current connection's `start` (null: not a resume)
  resumes: 0,        // how many times the session was resumed
  attempts: 0,       // attempts to connect since the last `ready`
  timer: null,       // the pending reconnection
  stopped: false,    // the user pressed Stop: never resumed from then on
  stopPending: false, // Stop pressed before `ready`: `stop` follows the resent audio
  error: null,       // the code of the current connection's error
  end: null,         // the reason of the current connection's `end`
  connections: 0,    // connections opened for this session
  log: [],           // {conn, msg} of every message but partials, {conn, sent} of each start (debugging, tests)
};
window.speechpipe = state;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function segmentLine(i) {
  let p = document.getElementById(`seg-${i}`);
  if (!p) {
    p = document.createElement("p");
    p.id = `seg-${i}`;
    p.dataset.segment = i;
    $("transcript").appendChild(p);
  }
  return p;
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

// -- messages ------------------------------------------------------------------------------------

function onMessage(msg) {
  if (msg.type !== "partial") record({ conn: state.connections, msg });
  switch (msg.type) {
    case "ready":
      onReady(msg);
      break;
    case "speech_start": {
      if (state.done.has(msg.segment)) break;
      const p = segmentLine(msg.segment);
      p.className = "partial";
      p.textContent = "…";
      break;
    }
    case "partial": {
      if (state.done.has(msg.segment)) break;
      const p = segmentLine(msg.segment);
      if (p.classList.contains("final")) break;
      p.className = "partial";
      // the committed words plainly, the unstable tail dimmed (docs/protocol.md, partial)
      const stable = msg.stable && msg.text.startsWith(msg.stable) ? msg.stable : "";
      const committed = document.createElement("span");
      committed.className = "stable";
      committed.textContent = stable;
      const tail = document.createElement("span");
      tail.className = "tail";
      tail.textContent = msg.text.slice(stable.length);
      p.replaceChildren(committed, tail);
      break;
    }
    case "discarded":
      if (!outcome(msg)) break;
      segmentLine(msg.segment).remove();
      break;
    case "final": {
      if (!outcome(msg)) break;
      const p = segmentLine(msg.segment);
      p.className = "final";
      p.textContent = "";
      const t = document.createElement("span");
      t.className = "time";
      t.textContent = `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s`;
      const text = document.createElement("span");
      text.className = "text";
      text.textContent = msg.text || "(no words)";
      const lat = document.createElement("span");
      lat.className = "latency";
      lat.textContent = `latency ${msg.latency_s.toFixed(2)} s`;
      p.append(t, text, lat);
      state.latencies.push(msg.latency_s);
      const sorted = [...state.latencies].sort((a, b) => a - b);
      $("summary").textContent =
        `${sorted.length} final(s); median latency ${sorted[Math.floor((sorted.length - 1) / 2)].toFixed(2)} s`;
      break;
    }
    case "error":
      state.error = msg.code;
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

function retryable(code) {
  return state.session !== null && RETRYABLE.includes(code);
}

function onReady(msg) {
  state.ready = true;
  state.attempts = 0;
  if (state.session === null) {
    state.session = msg.session;
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
  if (state.session === null) return; // stream time begins with the first `ready`
  keep(buf); // kept before it is sent: a send into a broken connection is sent again
  if (state.ready && state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(buf);
}

// -- connections ---------------------------------------------------------------------------------

function streamUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = $("token").value || new URLSearchParams(location.search).get("token");
  return `${proto}//${location.host}/stream` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function connect() {
  state.timer = null;
  state.ready = false;
  state.error = state.end = null;
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
  ws.onerror = () => {
    if (ws === state.ws && state.session === null) status("Connection failed (is the server up? is a token needed?).", true);
  };
  ws.onclose = (ev) => {
    if (ws === state.ws) onClose(ev);
  };
}

function onClose(ev) {
  state.ws = null;
  state.ready = false;
  if (shouldResume()) {
    if (state.attempts < MAX_ATTEMPTS) {
      const delay = RESUME_BACKOFF_S[Math.min(state.attempts, RESUME_BACKOFF_S.length - 1)];
      state.attempts += 1;
      status(`Reconnecting… (resumed ${state.resumes} times)`);
      state.timer = setTimeout(connect, delay * 1000);
      return;
    }
    status(`Connection lost; gave up resuming session ${state.session} after ${state.attempts} attempts.`, true);
  } else if (state.error !== null && !state.end && retryable(state.error)) {
    status(`Server error ${state.error} (connection closed ${ev.code}).`, true);
  } else if (ev.code !== 1000 && state.error === null) {
    status(`Connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}).`, ev.code !== 1001);
  }
  teardown();
}

// Resumed: a stream whose connection broke (no `end`, or `end` with reason `shutdown`) while the
// microphone is on, or that was refused for now (a retryable error); never after Stop or an error
// that would come again.
function shouldResume() {
  if (state.session === null || state.stopped || !state.media) return false;
  if (state.error !== null) return retryable(state.error);
  return state.end === null || state.end === "shutdown";
}

// -- controls ------------------------------------------------------------------------------------

async function start() {
  $("start").disabled = true;
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

  Object.assign(state, {
    session: null, rate: state.ctx.sampleRate, sentSamples: 0, kept: [], done: new Set(), last: null,
    resumes: 0, attempts: 0, stopped: false, stopPending: false, connections: 0, log: [],
  });
  state.node.port.onmessage = (ev) => onFrame(ev.data);
  connect();
}

function stop() {
  $("stop").disabled = true;
  state.stopped = true;
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
