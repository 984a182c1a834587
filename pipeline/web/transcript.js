// The live page's transcript and header, drawn from the server's messages (docs/protocol.md): a
// line per segment (`#seg-N`), a partial's committed words plainly and its unstable tail dimmed,
// a final's times, text, variant, review badge and latency, a reviewer's revision in place, and
// the line naming what serves the stream. Drawing only: app.js (loaded after it) holds the
// stream's state and decides what to draw.
"use strict";

// what a final's `review` shows until its revision comes: [badge class, badge text, tooltip].
const REVIEW_BADGES = {
  pending: ["pending", "pending review", "A person will review this segment; their text will replace this one."],
  provisional: ["provisional", "provisional", "The AI's text, shown until a person's review replaces it."],
};

function segmentLine(i) {
  let p = document.getElementById(`seg-${i}`);
  if (!p) {
    p = document.createElement("p");
    p.id = `seg-${i}`;
    p.dataset.segment = i;
    document.getElementById("transcript").appendChild(p);
  }
  return p;
}

// The line of segment `i` once its final is shown, else null.
function finalLine(i) {
  const p = document.getElementById(`seg-${i}`);
  return p && p.classList.contains("final") ? p : null;
}

function span(className, text) {
  const s = document.createElement("span");
  s.className = className;
  s.textContent = text;
  return s;
}

function showSpeechStart(segment) {
  const p = segmentLine(segment);
  p.className = "partial";
  p.textContent = "…";
}

// The committed words plainly, the unstable tail dimmed (docs/protocol.md, partial); a line that
// already has its final keeps it.
function showPartial(msg) {
  const p = segmentLine(msg.segment);
  if (p.classList.contains("final")) return;
  p.className = "partial";
  const stable = msg.stable && msg.text.startsWith(msg.stable) ? msg.stable : "";
  p.replaceChildren(span("stable", stable), span("tail", msg.text.slice(stable.length)));
}

// A final's line: its times, its text, the variant when another than the session's (`variant`)
// served it, a badge while a person's review is awaited, its latency (or why it was lost).
function showFinal(msg, variant) {
  const p = segmentLine(msg.segment);
  const awaited = REVIEW_BADGES[msg.review];
  p.className = "final";
  p.dataset.ai = msg.text || "";
  p.dataset.review = msg.review || "none";
  const parts = [span("time", `${msg.start.toFixed(1)}–${msg.end.toFixed(1)} s`)];
  if (!msg.text && awaited) {
    p.classList.add("awaiting"); // levels human and shadow: the text is a person's, to come
    parts.push(span("text", "(awaiting a person's transcript)"));
  } else {
    parts.push(span("text", msg.text || "(no words)"));
  }
  if (msg.variant && variant && msg.variant !== variant) parts.push(span("variant", `variant ${msg.variant}`));
  if (awaited) {
    const badge = span(`badge ${awaited[0]}`, awaited[1]);
    badge.title = awaited[2];
    parts.push(badge);
  }
  if (msg.status === "lost") parts.push(span("lost", `lost (${msg.reason})`));
  else if (Number.isFinite(msg.latency_s)) parts.push(span("latency", `latency ${msg.latency_s.toFixed(2)} s`));
  p.replaceChildren(...parts);
  return p;
}

const sameWords = (a, b) => a.trim().split(/\s+/).join(" ") === b.trim().split(/\s+/).join(" ");

// A person's text (a `revision`) in place of the AI's on a final's line `p`: "corrected" with the
// AI's text struck through beside it (and in the tooltip), or "confirmed" when it is the same
// text. A later revision of the same segment replaces the earlier one; the AI's text stays.
function revise(p, msg) {
  const ai = p.dataset.ai;
  const same = ai !== "" && sameWords(ai, msg.text);
  const by = msg.by || "a person";
  const verdict = same ? "confirmed" : "corrected";
  p.classList.remove("awaiting");
  p.classList.add("revised");
  p.dataset.review = verdict;
  const text = p.querySelector(".text");
  text.textContent = msg.text.trim() || "(no words)";
  text.title = ai ? `${verdict} by ${by}; the AI's text: ${ai}` : `transcribed by ${by}; the AI gave no text`;
  let struck = p.querySelector(".ai");
  if (!same && ai) {
    if (!struck) {
      struck = document.createElement("del");
      struck.className = "ai";
      text.after(struck);
    }
    struck.textContent = ai;
    struck.title = "the AI's text";
  } else if (struck) {
    struck.remove();
  }
  let badge = p.querySelector(".badge");
  if (!badge) {
    badge = span("badge", "");
    const latency = p.querySelector(".latency, .lost");
    if (latency) latency.before(badge);
    else p.append(badge);
  }
  badge.className = `badge ${verdict}`;
  badge.textContent = verdict;
  badge.title = `${verdict} by ${by}`;
}

// The line under the title: the variant that serves the stream and its role, from `ready`
// ("Served by candidate `twin`, model tiny.en").
function showServed(msg) {
  const served = document.getElementById("served");
  if (!msg.variant) {
    served.textContent = `Served by model ${msg.model}`;
    return;
  }
  const name = document.createElement("code");
  name.textContent = msg.variant;
  served.replaceChildren(`Served by ${msg.role || "variant"} `, name, `, model ${msg.model}`);
  served.dataset.variant = msg.variant;
  served.dataset.role = msg.role || "";
}
