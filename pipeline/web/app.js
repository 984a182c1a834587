// Browser client of the speechpipe live server: microphone -> AudioWorklet (20 ms PCM frames)
// -> WebSocket /stream -> partial and final transcripts shown as they arrive.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { ws: null, ctx: null, media: null, node: null, ready: false, latencies: [] };

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

function onMessage(msg) {
  switch (msg.type) {
    case "ready":
      state.ready = true;
      status(`Listening (session ${msg.session}, model ${msg.model}).`);
      break;
    case "speech_start": {
      const p = segmentLine(msg.segment);
      p.className = "partial";
      p.textContent = "…";
      break;
    }
    case "partial": {
      const p = segmentLine(msg.segment);
      if (p.classList.contains("final")) break;
      p.className = "partial";
      p.textContent = msg.text;
      break;
    }
    case "discarded":
      segmentLine(msg.segment).remove();
      break;
    case "final": {
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
      status(`Server error ${msg.code}: ${msg.message}`, true);
      break;
    case "end":
      status(`Stream ended (${msg.reason}).`);
      break;
  }
}

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

  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const token = $("token").value || new URLSearchParams(location.search).get("token");
  const url = `${proto}//${location.host}/stream` + (token ? `?token=${encodeURIComponent(token)}` : "");
  const ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  state.ready = false;
  ws.onopen = () => {
    ws.send(JSON.stringify({ type: "start", sample_rate: state.ctx.sampleRate, encoding: "pcm_s16le", channels: 1 }));
    $("stop").disabled = false;
  };
  ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
  ws.onerror = () => status("Connection failed (is the server up? is a token needed?).", true);
  ws.onclose = (ev) => {
    if (ev.code !== 1000) status(`Connection closed (${ev.code}${ev.reason ? ": " + ev.reason : ""}).`, ev.code !== 1001);
    teardown();
  };
  state.node.port.onmessage = (ev) => {
    if (state.ready && ws.readyState === WebSocket.OPEN) ws.send(ev.data);
  };
}

function stop() {
  $("stop").disabled = true;
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: "stop" }));
    status("Finishing…");
  }
  stopAudio();
}

function stopAudio() {
  if (state.media) state.media.getTracks().forEach((t) => t.stop());
  if (state.ctx) state.ctx.close();
  state.media = state.ctx = state.node = null;
}

function teardown() {
  stopAudio();
  state.ws = null;
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
