// eartalk serve page: plain JS, no build step. The protocol is described in docs/serving.md.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const query = token ? "?token=" + encodeURIComponent(token) : "";
const FRAME = 0x46, UPLOAD_PORTRAIT = 0x01, UPLOAD_AUDIO = 0x02, AUDIO_CHUNK = 0x03;
const PLAYOUT_DELAY = 0.12;  // s of audio buffered before the first frame plays

const $ = (id) => document.getElementById(id);
const ui = {
  error: $("error"), start: $("start"), stop: $("stop"), view: $("view"), acks: $("acks"),
  frame: $("stat-frame"), fps: $("stat-fps"), latency: $("stat-latency"), gen: $("stat-gen"), state: $("stat-state"), voice: $("stat-voice"),
};
const ctx2d = ui.view.getContext("2d");

let info = null;          // the server's /api/info (controls, limits, audio)
let ws = null;            // the stream's socket
let audioCtx = null;      // playback clock; frames are shown when their audio plays
let base = null;          // audioCtx time of frame 0
let mic = null;           // {ctx, source, node, stream} while the microphone streams
let framesReceived = 0;
let drawnTimes = [];      // for the fps readout
let nextId = 1;
const sentAt = {};        // control id -> frames received when sent
const controlRows = {};   // control name -> current row (what the widgets show)
const statusEls = {};
window.eartalk = { framesDrawn: 0, acks: [], errors: [] };  // read by the browser test

function showError(text) {
  ui.error.textContent = text;
  window.eartalk.errors.push(text);
}

function setState(text) { ui.state.textContent = text; }

async function init() {
  const response = await fetch("api/info" + query);
  const body = await response.json();
  if (!response.ok) { showError(body.message || ("HTTP " + response.status)); $("model-info").textContent = "not connected"; return; }
  info = body;
  const m = info.model, a = info.audio;
  $("model-info").textContent = `model ${m.preset}, ${m.resolution} px, ${m.fps} fps`;
  $("av-note").textContent = `Each frame carries its own 40 ms of audio; audio and frame t play together at `
    + `t x 40 ms after the start, ${Math.round(PLAYOUT_DELAY * 1000)} ms of buffer. The audio condition looks `
    + `${a.lookahead_frames} frames (${a.lookahead_ms} ms) ahead, so a live microphone runs that much behind.`;
  $("speech-seconds").max = info.limits.bundled_speech_seconds;
  buildControls(info.controls);
  updatePreview();
}

function updatePreview() {
  const img = $("portrait-preview");
  const file = $("portrait-file").files[0];
  if (choice("portrait") === "upload" && file) { img.src = URL.createObjectURL(file); return; }
  img.src = "api/face" + (query ? query + "&" : "?") + "seed=" + encodeURIComponent($("face-seed").value || 0);
}

function choice(name) { return document.querySelector(`input[name=${name}]:checked`).value; }

// -- controls --------------------------------------------------------------------------------
function buildControls(controls) {
  const list = $("control-list");
  list.innerHTML = "";
  for (const c of controls) {
    if (c.name === (info.audio.plugin || "audio")) continue;  // driven by the speech input
    const labels = Object.keys(c.labels);
    if (!c.sliders.length && !labels.length && !c.steps.length) continue;
    const box = document.createElement("fieldset");
    box.id = "control-" + c.name;
    const legend = document.createElement("legend");
    legend.textContent = c.name;
    const status = document.createElement("span");
    status.className = "status";
    status.textContent = "absent";
    statusEls[c.name] = status;
    legend.appendChild(status);
    box.appendChild(legend);
    controlRows[c.name] = c.initial ? c.initial.slice() : null;
    const outputs = [];
    for (const s of c.sliders) {
      const row = document.createElement("label");
      row.className = "slider";
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: s.min, max: s.max, step: s.step, id: `slider-${c.name}-${s.column}` });
      input.value = controlRows[c.name] ? controlRows[c.name][s.index] : (s.min + s.max) / 2;
      const out = document.createElement("output");
      out.textContent = Number(input.value).toFixed(2);
      input.addEventListener("input", () => {
        if (!controlRows[c.name]) return;
        controlRows[c.name][s.index] = Number(input.value);
        out.textContent = Number(input.value).toFixed(2);
        sendControl(c.name, controlRows[c.name]);
      });
      outputs.push([s, input, out]);
      row.append(`${s.column}${s.unit ? " (" + s.unit + ")" : ""}`, input, out);
      box.appendChild(row);
    }
    const refresh = () => {
      for (const [s, input, out] of outputs) {
        input.value = controlRows[c.name][s.index];
        out.textContent = Number(input.value).toFixed(2);
      }
    };
    if (labels.length) {
      const row = document.createElement("div");
      row.className = "choices";
      for (const label of labels) {
        const b = document.createElement("button");
        b.textContent = label;
        b.id = `label-${c.name}-${label}`;
        b.addEventListener("click", () => {
          controlRows[c.name] = c.labels[label].slice();
          refresh();
          row.querySelectorAll("button").forEach((x) => x.classList.toggle("active", x === b));
          sendControl(c.name, controlRows[c.name]);
        });
        row.appendChild(b);
      }
      box.appendChild(row);
    }
    for (const step of c.steps) {
      const row = document.createElement("div");
      row.className = "choices";
      row.append(step.column + ": ");
      for (const v of step.values) {
        const b = document.createElement("button");
        b.textContent = v;
        b.addEventListener("click", () => {
          if (!controlRows[c.name]) return;
          controlRows[c.name][step.index] = v;
          row.querySelectorAll("button").forEach((x) => x.classList.toggle("active", x === b));
          sendControl(c.name, controlRows[c.name]);
        });
        row.appendChild(b);
      }
      box.appendChild(row);
    }
    const clear = document.createElement("button");
    clear.textContent = "clear";
    clear.id = `clear-${c.name}`;
    clear.addEventListener("click", () => sendClear(c.name));
    box.appendChild(clear);
    list.appendChild(box);
  }
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function sendControl(name, row) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const id = nextId++;
  sentAt[id] = framesReceived;
  statusEls[name].textContent = "sent...";
  send({ type: "control", name, value: row, id });
}

function sendClear(name) {
  const id = nextId++;
  sentAt[id] = framesReceived;
  send({ type: "clear", name, id });
}

function onAck(ack) {
  window.eartalk.acks.push(ack);
  const li = document.createElement("li");
  const waited = ack.frame - (sentAt[ack.id] ?? ack.frame);
  li.textContent = `${ack.name} ${ack.cleared ? "cleared" : "set"} -> frame ${ack.frame} (+${waited})`;
  ui.acks.prepend(li);
  while (ui.acks.children.length > 50) ui.acks.lastChild.remove();
  if (statusEls[ack.name]) statusEls[ack.name].textContent = ack.cleared ? `absent from frame ${ack.frame}` : `from frame ${ack.frame}`;
}

// -- streaming -------------------------------------------------------------------------------
async function start() {
  ui.error.textContent = "";
  ui.acks.innerHTML = "";
  framesReceived = 0; base = null; drawnTimes = [];
  const portrait = choice("portrait"), speech = choice("speech");
  const portraitFile = $("portrait-file").files[0], audioFile = $("audio-file").files[0];
  if (portrait === "upload" && !portraitFile) return showError("choose a portrait file to upload");
  if (speech === "upload" && !audioFile) return showError("choose an audio file to upload");
  if (!audioCtx) { try { audioCtx = new AudioContext(); } catch (e) { audioCtx = null; } }
  if (audioCtx && audioCtx.state === "suspended") { try { await audioCtx.resume(); } catch (e) { /* frames still show */ } }
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  ws = new WebSocket(`${scheme}//${location.host}${location.pathname.replace(/[^/]*$/, "")}ws${query}`);
  ws.binaryType = "arraybuffer";
  setState("connecting");
  ui.start.disabled = true;
  ws.onmessage = (event) => onMessage(event, { portrait, speech, portraitFile, audioFile });
  ws.onclose = (event) => {
    setState(event.code === 1000 || event.code === 1005 ? "idle" : `closed (${event.code}${event.reason ? ": " + event.reason : ""})`);
    stopMic();
    ui.start.disabled = false; ui.stop.disabled = true;
  };
  ws.onerror = () => showError("the connection to the server failed");
}

async function onMessage(event, opts) {
  if (typeof event.data !== "string") return onFrame(event.data);
  const msg = JSON.parse(event.data);
  if (msg.type === "hello") {
    if (opts.portrait === "upload") ws.send(withKind(UPLOAD_PORTRAIT, await opts.portraitFile.arrayBuffer()));
    if (opts.speech === "upload") ws.send(withKind(UPLOAD_AUDIO, await opts.audioFile.arrayBuffer()));
    const startMsg = {
      type: "start", portrait: opts.portrait, speech: opts.speech, face_seed: Number($("face-seed").value || 0),
      seconds: Number($("speech-seconds").value || 8), pace: "realtime",
    };
    ws.send(JSON.stringify(startMsg));
    setState("preparing");
  } else if (msg.type === "started") {
    setState(`streaming ${msg.frames === null ? "" : msg.frames + " frames"}`);
    ui.voice.textContent = "-"; ui.voice.className = "";
    ui.stop.disabled = false;
    if (opts.speech === "microphone") startMic();
  } else if (msg.type === "ack") {
    onAck(msg);
  } else if (msg.type === "voice") {
    ui.voice.textContent = msg.listening ? `listening (frame ${msg.frame})` : `speaking (frame ${msg.frame})`;
    ui.voice.className = msg.listening ? "listening" : "speaking";
  } else if (msg.type === "error") {
    showError(`${msg.code}: ${msg.message}`);
    if (msg.code === "start_failed" || msg.fatal) { ws.close(); }
  } else if (msg.type === "end") {
    setState(`ended (${msg.reason}, ${msg.frames} frames)`);
    stopMic();
    ws.close(1000);
  }
}

function withKind(kind, buffer) {
  const out = new Uint8Array(buffer.byteLength + 1);
  out[0] = kind;
  out.set(new Uint8Array(buffer), 1);
  return out.buffer;
}

async function onFrame(buffer) {
  const view = new DataView(buffer);
  if (view.getUint8(0) !== FRAME) return;
  const index = view.getUint32(1, true), gen = view.getFloat32(5, true), age = view.getFloat32(9, true);
  const samples = view.getUint16(13, true);
  const pcm = new Int16Array(buffer.slice(15, 15 + 2 * samples));
  const jpeg = new Blob([buffer.slice(15 + 2 * samples)], { type: "image/jpeg" });
  framesReceived = index + 1;
  ui.latency.textContent = age.toFixed(1);
  ui.gen.textContent = gen.toFixed(1);
  const bitmap = await createImageBitmap(jpeg);
  let delay = 0;
  const playing = audioCtx && audioCtx.state === "running" && choice("speech") !== "microphone";
  if (playing) {
    const now = audioCtx.currentTime;
    if (base === null || base + index * 0.04 < now + 0.005) base = now + PLAYOUT_DELAY - index * 0.04;  // (re)start the clock
    const due = base + index * 0.04;
    const audio = audioCtx.createBuffer(1, samples, info.audio.sample_rate);
    const data = audio.getChannelData(0);
    for (let i = 0; i < samples; i++) data[i] = pcm[i] / 32768;
    const source = audioCtx.createBufferSource();
    source.buffer = audio;
    source.connect(audioCtx.destination);
    source.start(due);
    delay = Math.max(0, (due - now) * 1000);
  }
  setTimeout(() => draw(bitmap, index), delay);
}

function draw(bitmap, index) {
  ctx2d.imageSmoothingEnabled = true;
  ctx2d.drawImage(bitmap, 0, 0, ui.view.width, ui.view.height);
  bitmap.close();
  window.eartalk.framesDrawn++;
  ui.frame.textContent = index;
  const now = performance.now();
  drawnTimes.push(now);
  while (drawnTimes.length && drawnTimes[0] < now - 1000) drawnTimes.shift();
  ui.fps.textContent = drawnTimes.length > 1 ? ((drawnTimes.length - 1) * 1000 / (now - drawnTimes[0])).toFixed(1) : "-";
}

function stop() {
  send({ type: "stop" });
  stopMic();
  ui.stop.disabled = true;
}

// -- microphone: 16 kHz mono float32 chunks into the server's AudioStream -----------------------
async function startMic() {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
    const ctx = new AudioContext({ sampleRate: info.audio.sample_rate });
    const source = ctx.createMediaStreamSource(stream);
    const node = ctx.createScriptProcessor(1024, 1, 1);
    node.onaudioprocess = (e) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) return;
      const samples = e.inputBuffer.getChannelData(0);
      ws.send(withKind(AUDIO_CHUNK, new Float32Array(samples).buffer));
    };
    source.connect(node);
    node.connect(ctx.destination);
    mic = { ctx, source, node, stream };
  } catch (e) {
    showError("microphone: " + e.message);
    send({ type: "audio_end" });
  }
}

function stopMic() {
  if (!mic) return;
  mic.node.disconnect(); mic.source.disconnect();
  mic.stream.getTracks().forEach((t) => t.stop());
  mic.ctx.close();
  mic = null;
  send({ type: "audio_end" });
}

ui.start.addEventListener("click", start);
ui.stop.addEventListener("click", stop);
$("face-seed").addEventListener("change", updatePreview);
$("portrait-file").addEventListener("change", updatePreview);
document.querySelectorAll("input[name=portrait]").forEach((el) => el.addEventListener("change", updatePreview));
init().catch((e) => showError("cannot reach the server: " + e.message));
