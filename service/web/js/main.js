// The page's controller: sources -> editor -> session -> stream -> view, the status line, messages,
// keyboard shortcuts and URL parameters (docs/WEB.md). It holds the session token in memory only.

import * as api from "./api.js";
import { Editor } from "./editor.js";
import { JobPanel } from "./jobs.js";
import { decodeLabelPng, encodeLabelPng, idsIn, setPalette } from "./labels.js";
import { bindControls, bindKeys } from "./controls.js";
import { download, editMessages } from "./live.js";
import { renderObjectList } from "./objectlist.js";
import { CameraSource, ImagesSource, VideoFileSource, encodeFrame, snapshot } from "./sources.js";
import { hideMessage, renderPhase, renderStatus, showMessage } from "./status.js";
import { applyUrlSettings, chooseModel, inflightSetting, placeUrlObjects, quality } from "./settings.js";
import { View } from "./view.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const STALL_MS = 20000;

const view = new View($("view"));
const editor = new Editor();
const jobs = new JobPanel((err) => showMessage(api.describeError(err)));

const S = {
  info: null,
  boxInit: false,
  source: null,
  frozen: false,        // camera: the preview is stopped on `still` for drawing
  still: null,          // {bitmap, blob}: the frame on screen that edits apply to
  labels: null,         // the label map on screen (of `still`)
  phase: "idle",        // idle | preview | starting | streaming | pausing | paused | finishing | done
  session: null,        // {id, token, wsUrl}
  objects: new Map(),   // tracked id -> {score, box}
  stream: null,
  inflight: new Map(),  // frame id -> {bitmap, t, blob}
  nextId: 0,
  resumeFrom: null,     // the seq of the first frame not answered yet (the stream's resume_from on reconnect)
  sourceDone: false,
  pumping: false,
  grabbing: false,
  answers: Promise.resolve(),
  counts: { sent: 0, answered: 0, skipped: 0, errors: 0 },
  answerTimes: [],
  lastAnswerAt: 0,
  latency: null,
  compute: null,
  frameIndex: null,
  tags: [],             // object numbers drawn at their boxes
  liveEdit: false,      // drawing while streaming: the editor is shown over the live frames until sent
  record: params.get("record") === "1",
  results: [],
  sent: [],
};

// ---------------------------------------------------------------- messages and status

function setPhase(phase) {
  S.phase = phase;
  renderPhase(S);
}

function updateStatus() {
  const now = performance.now();
  renderStatus(S, now);
  if (S.phase === "streaming" && S.inflight.size && now - S.lastAnswerAt > STALL_MS && !S.stallShown) {
    S.stallShown = true;
    showMessage(`no answer from the service for ${STALL_MS / 1000} s (${S.inflight.size} frames waiting)`, "error",
      [{ label: "Reconnect", run: reconnect }, { label: "Restart session", run: restart }]);
  }
}

// ---------------------------------------------------------------- drawing and the object list

function draw(extra = {}) {
  const editing = S.phase === "paused" || S.phase === "done" || !S.session || S.liveEdit;
  const labels = editing ? editor.labels : S.labels;
  const boxes = editor.drag ? { ...editor.boxes, [editor.active]: editor.dragBox() } : editor.boxes;
  view.render(S.still && S.still.bitmap, labels, editing ? boxes : {},
    { dashed: true, tags: editing ? [] : S.tags, ...extra });
}

function trackedIds() { return [...S.objects.keys()].sort((a, b) => a - b); }

function renderObjects() {
  const pending = editor.ready ? editor.edits(trackedIds()) : { painted: [], boxed: [], corrected: [] };
  const ids = new Set([...trackedIds(), ...pending.painted, ...pending.boxed, editor.active]);
  renderObjectList($("objects"), [...ids].sort((a, b) => a - b),
    { active: editor.active, objects: S.objects, pending, onSelect: selectObject, onRemove: removeObject });
}

function selectObject(id) {
  if (id < 1 || id > 254) return;
  editor.active = id;
  renderObjects();
}

function newObject() {
  const used = [...trackedIds(), ...idsIn(editor.labels), ...Object.keys(editor.boxes).map(Number)];
  const id = used.length ? Math.max(...used) + 1 : 1;
  if (id > 254) return showMessage("at most 254 objects");
  selectObject(id);
}

function setTool(tool) {
  if (tool === "box" && !S.boxInit) {
    return showMessage("this model has no box encoder: paint a mask with the brush instead", "info");
  }
  editor.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) b.setAttribute("aria-pressed", String(b.dataset.tool === tool));
}

// ---------------------------------------------------------------- sources

async function openSource(src) {
  await stopSession();
  if (S.source) S.source.close();
  S.source = null;
  S.still = null;
  S.frozen = false;
  jobs.show(false);
  setPhase("idle");
  try {
    await src.open();
  } catch (err) {
    showMessage(api.describeError(err), "error", src.kind === "camera" ? [{ label: "Retry camera", run: openCamera }] : []);
    return false;
  }
  hideMessage();
  S.source = src;
  editor.reset(src.width, src.height);
  S.labels = null;
  if (src.kind === "camera") {
    S.still = await src.grab(quality());
    src.watch(onCameraFrame);
  } else {
    S.still = await src.next(quality());
    S.frameIndex = 0;
  }
  setPhase("preview");
  renderObjects();
  draw();
  return true;
}

function openCamera() { return openSource(new CameraSource($("video"))); }

async function onCameraFrame() {
  if (S.grabbing) return;
  if (S.phase === "preview" && !S.frozen) {
    S.grabbing = true;
    try {
      const bitmap = snapshot($("video"));
      if (S.still && S.still.bitmap) S.still.bitmap.close();
      S.still = { bitmap, blob: null };
      draw();
    } finally {
      S.grabbing = false;
    }
  } else if (S.phase === "streaming" && S.inflight.size <= maxInflight()) {
    // mode=latest: one frame more than the server runs at once, so it always holds the newest
    S.grabbing = true;
    try {
      await sendFrame(await S.source.grab(quality()));
    } catch (err) {
      console.warn("frame not sent:", err.message);
    } finally {
      S.grabbing = false;
    }
  }
}

/** Camera: keep the current picture still so objects can be drawn on it. */
async function freeze() {
  if (!S.source || S.source.kind !== "camera" || S.frozen) return;
  S.frozen = true;
  if (!S.still || !S.still.blob) S.still = await S.source.grab(quality());
  setPhase(S.phase);
}

// ---------------------------------------------------------------- session

const maxInflight = () => inflightSetting(S.info ? S.info.limits.max_inflight_frames : 16, S.source && S.source.kind);
const streamMode = () => params.get("mode") || (S.source ? S.source.mode : "all");

async function start() {
  if (!S.source || !S.still) return showMessage("choose a source first: camera, video file or images", "info");
  if (S.session) return;
  if (S.source.kind === "camera") await freeze();
  const { painted, boxed } = editor.edits([]);
  if (!painted.length && !boxed.length) {
    return showMessage(S.boxInit ? "drag a box or paint a mask on the frame first" : "paint a mask on the frame first", "info");
  }
  const mask = painted.length ? await encodeLabelPng(editor.only(painted), editor.width, editor.height) : null;
  const boxes = Object.fromEntries(boxed.map((id) => [id, editor.boxes[id]]));
  await begin(() => api.createSession(S.still.blob, mask, boxes, $("crop").value.trim(), $("profile").value), start,
    { mask, boxes });
}

/** Open a saved session (a file from "Save session"): it continues on the current source's frames. */
async function openSession(file) {
  if (!S.source || !S.still) return showMessage("choose a source first: the saved session continues on its frames", "info");
  if (S.session) return showMessage("stop the current session first", "info");
  if (S.source.kind === "camera") await freeze();
  await begin(() => api.createSessionFromState(file), () => openSession(file), {});
}

async function saveSession() {
  if (!S.session) return;
  try {
    download(await api.getState(S.session), `session-${S.session.id.slice(0, 8)}.lwlstate`);
  } catch (err) {
    showMessage(`the session was not saved: ${api.describeError(err)}`);
  }
}

/** A new session (`create` makes it), its first result on screen, then its stream. */
async function begin(create, retry, { mask = null, boxes = null }) {
  setPhase("starting");
  try {
    const created = await create();
    S.session = { id: created.session_id, token: created.token, wsUrl: created.ws_url };
    S.objects.clear();
    S.counts = { sent: 0, answered: 0, skipped: 0, errors: 0 };
    S.results.length = 0;
    S.sent.length = 0;
    if (S.record && S.still.blob) S.sent.push({ id: 0, blob: S.still.blob, mask, boxes });
    S.sourceDone = false;
    S.resumeFrom = null;
    S.frameIndex = created.result.frame_index;
    await showResult(S.still.bitmap, created.result);
    editor.reset(editor.width, editor.height);
    openStream();
  } catch (err) {
    S.session = null;
    setPhase("preview");
    showMessage(`the session did not start: ${api.describeError(err)}`, "error", [{ label: "Retry", run: retry }]);
  }
}

/** A stream of the session. `resume`: frames of the dropped stream are still in flight; the service answers
 * those it had accepted (listed in `ready.resumed`) and the page sends the others again, so every frame is
 * segmented once, in order (docs/API.md, "Resume"). */
function openStream(resume = false) {
  if (!resume) dropInflight();
  S.stallShown = false;
  const options = { mode: streamMode(), format: "png", max_inflight: maxInflight() };
  if (resume && S.resumeFrom !== null) options.resume_from = S.resumeFrom;
  const url = api.streamUrl(S.session.wsUrl, options);
  S.stream = new api.Stream(url, S.session.token, {
    onReady: (msg) => { S.answers = S.answers.then(() => onReady(msg)).catch((e) => console.error(e)); },
    onAnswer: (msg) => { S.answers = S.answers.then(() => onAnswer(msg)).catch((e) => console.error(e)); },
    onClose: (code, reason, byUs) => { S.answers = S.answers.then(() => onClose(code, reason, byUs)); },
  });
  setPhase("starting");
}

async function onReady(msg) {
  if (S.resumeFrom === null) S.resumeFrom = msg.next_seq;
  setPhase("streaming");
  S.lastAnswerAt = performance.now();
  if (msg.resumed) {
    const accepted = new Set(msg.resumed.map((r) => r.id));
    for (const [id, entry] of S.inflight) {  // in the order sent: the accepted ones come first
      if (accepted.has(id)) continue;
      if (!(entry.edit ? S.stream.sendEdit(id, entry.edit) : await S.stream.send(id, entry.blob))) return;
    }
  }
  pump();
}

function dropInflight() {
  for (const e of S.inflight.values()) if (e.bitmap) e.bitmap.close();
  S.inflight.clear();
}

/** A new frame in flight, sent; false when the stream has closed. The frame then stays in flight for Reconnect to
 * send again, and onClose reports the close: the sender has nothing to add. */
async function sendFrame(frame) {
  const id = ++S.nextId;
  S.inflight.set(id, { bitmap: frame.bitmap, t: performance.now(), blob: frame.blob });
  S.counts.sent += 1;
  if (S.record) S.sent.push({ id, blob: frame.blob });
  return S.stream.send(id, frame.blob);
}

/** Files and images: keep up to max_inflight frames at the service, in order, until the last one. */
async function pump() {
  if (S.pumping || !S.source || S.source.kind === "camera") return;
  S.pumping = true;
  try {
    while (S.phase === "streaming" && !S.sourceDone && S.inflight.size < maxInflight()) {
      const frame = await S.source.next(quality());
      if (S.phase !== "streaming") {
        S.pendingFrame = frame; // paused while decoding: send it on resume
        break;
      }
      if (!frame) {
        S.sourceDone = true;
        setPhase("finishing");
        S.stream.finish();
        break;
      }
      if (!(await sendFrame(frame))) break;
    }
  } catch (err) {
    showMessage(`reading the source failed: ${api.describeError(err)}`);
  } finally {
    S.pumping = false;
  }
}

async function showResult(bitmap, result) {
  const { labels } = await decodeLabelPng(api.base64ToBytes(result.labels));
  if (S.still && S.still.bitmap && S.still.bitmap !== bitmap) S.still.bitmap.close();
  S.still = { bitmap, blob: null };
  S.labels = labels;
  S.objects = new Map(result.objects.map((o) => [o.id, { score: o.score, box: o.box }]));
  S.frameIndex = result.frame_index;
  if (S.record) S.results.push({ type: result.type, seq: result.seq, frame_index: result.frame_index, labels: result.labels, id: result.id,
    objects: result.objects.map(({ id, box, score, area }) => ({ id, box, score, area })) });
  S.tags = result.objects.filter((o) => o.box).map((o) => ({ id: o.id, x: o.box[0], y: o.box[1] }));
  if (S.liveEdit) draw(); // the edits being drawn stay on screen over the new frame
  else view.render(bitmap, labels, {}, { tags: S.tags });
  renderObjects();
}

async function onAnswer(msg) {
  const entry = S.inflight.get(msg.id);
  if (!entry) return; // an answer for a frame of an earlier stream
  S.inflight.delete(msg.id);
  S.lastAnswerAt = performance.now();
  if (Number.isInteger(msg.seq)) S.resumeFrom = Math.max(S.resumeFrom ?? 0, msg.seq + 1);
  if (entry.edit) {
    if (msg.type === "error") showMessage(`the edit was not applied: ${msg.detail} [${msg.code}]`, "error");
    else await showResult(S.still.bitmap, msg); // the merged result of the frame on screen after the edit
  } else if (msg.type === "result") {
    S.counts.answered += 1;
    S.answerTimes.push(performance.now());
    S.latency = msg.latency_ms;
    S.compute = msg.compute_ms;
    await showResult(entry.bitmap, msg);
  } else {
    entry.bitmap.close();
    if (msg.type === "skipped") S.counts.skipped += 1;
    else {
      S.counts.errors += 1;
      showMessage(`frame ${msg.id} was not segmented: ${msg.detail} [${msg.code}]`, "error");
    }
  }
  if (S.phase === "pausing" && !S.inflight.size) enterPaused();
  pump();
}

async function onClose(code, reason, byUs) {
  if (byUs) return;
  S.stream = null;
  const unanswered = S.inflight.size;
  const resumable = streamMode() === "all" && ![4401, 4403, 4404, 4410].includes(code);
  if (!resumable) dropInflight(); // kept otherwise: Reconnect resumes them
  if (code === 1000 && S.phase === "finishing") {
    setPhase("done");
    editor.reset(editor.width, editor.height, S.labels);
    showMessage(`done: ${S.counts.answered + 1} frames segmented. Stop deletes the session.`, "info");
    return;
  }
  if (!S.session) return;
  const what = api.CLOSE_REASONS[code] || `the stream closed (${code}${reason ? `: ${reason}` : ""})`;
  const lost = !unanswered ? "" : resumable ? ` ${unanswered} frame(s) in flight: Reconnect resumes them.`
    : ` ${unanswered} frame(s) in flight were not answered.`;
  const actions = [];
  if (![4401, 4403, 4404, 4410].includes(code)) actions.push({ label: "Reconnect", run: reconnect });
  actions.push({ label: "Restart session", run: restart });
  setPhase("paused");
  editor.reset(editor.width, editor.height, S.labels);
  showMessage(`${what}.${lost}`, "error", actions);
}

function reconnect() {
  if (!S.session) return start();
  openStream(S.inflight.size > 0);
}

/** A new session from the frame on screen and its masks: tracking goes on where it stopped. */
async function restart() {
  const labels = S.labels;
  const frame = S.still;
  await stopSession();
  S.labels = null;
  if (!frame || !frame.bitmap) return stop();
  const blob = frame.blob || await encodeFrame(frame.bitmap, quality());
  S.still = { bitmap: frame.bitmap, blob };
  editor.reset(frame.bitmap.width, frame.bitmap.height);
  if (S.source && S.source.kind === "camera") S.frozen = true;
  setPhase("preview");
  if (!labels || !idsIn(labels).length) {
    renderObjects();
    draw();
    return showMessage("no object was visible on this frame: draw the objects again and press Start", "info");
  }
  editor.labels.set(labels);
  await start();
}

function pause() {
  if (S.phase === "streaming") {
    setPhase("pausing");
    if (!S.inflight.size) enterPaused();
  } else if (S.phase === "paused") resume();
}

function enterPaused() {
  setPhase("paused");
  if (!S.liveEdit) editor.reset(S.still.bitmap.width, S.still.bitmap.height, S.labels); // else: keep the drawing
  S.liveEdit = false;
  renderObjects();
  draw();
}

async function resume() {
  if (S.phase !== "paused" || !S.session) return;
  const { corrected, painted, boxed } = editor.edits(trackedIds());
  if (corrected.length || painted.length || boxed.length) {
    if (!(await applyEdits())) return;
  }
  if (!S.stream) return reconnect();
  setPhase("streaming");
  S.lastAnswerAt = performance.now();
  if (S.pendingFrame !== undefined) {
    const f = S.pendingFrame;
    S.pendingFrame = undefined;
    if (!f) { S.sourceDone = true; setPhase("finishing"); S.stream.finish(); return; }
    if (!(await sendFrame(f))) return;
  }
  pump();
}

/** Streaming: the edits go into the stream without pausing; each applies after the frames sent so far. */
async function sendLiveEdits(edits) {
  for (const msg of await editMessages(editor, edits)) sendEdit(msg);
  S.liveEdit = false;
  editor.reset(editor.width, editor.height, S.labels);
  showMessage("edits sent in the stream: they apply from the next frame on", "info");
  renderObjects();
  draw();
  return true;
}

/** One edit in flight, like a frame: answered in order, sent again by Reconnect if the stream drops first. */
function sendEdit(msg) {
  const id = ++S.nextId;
  S.inflight.set(id, { bitmap: null, t: performance.now(), edit: msg });
  return S.stream.sendEdit(id, msg);
}

/** Paused: painted pixels of tracked ids -> corrections; new ids -> added objects (streaming: in the stream). */
async function applyEdits() {
  if (!S.session) return true;
  const tracked = trackedIds();
  const { corrected, painted, boxed } = editor.edits(tracked);
  const gone = editor.vanished(corrected);
  if (gone.length) {
    showMessage(`object ${gone.join(", ")} was erased completely: remove it with ✕ (Delete) instead`, "info");
    return false;
  }
  if (!corrected.length && !painted.length && !boxed.length) {
    showMessage("nothing to send: paint on a tracked object to correct it, or draw a new one", "info");
    return false;
  }
  if (S.phase === "streaming" && S.stream) return sendLiveEdits({ corrected, painted, boxed });
  const w = editor.width, h = editor.height;
  try {
    if (corrected.length) {
      const res = await api.correctSession(S.session, await encodeLabelPng(editor.only(corrected), w, h));
      await showResult(S.still.bitmap, res);
    }
    if (painted.length || boxed.length) {
      const mask = painted.length ? await encodeLabelPng(editor.only(painted), w, h) : null;
      const boxes = Object.fromEntries(boxed.map((id) => [id, editor.boxes[id]]));
      const res = await api.addObjects(S.session, mask, boxes);
      await showResult(S.still.bitmap, res);
    }
  } catch (err) {
    showMessage(`the edits were not applied: ${api.describeError(err)}`);
    return false;
  }
  editor.reset(w, h, S.labels);
  renderObjects();
  showMessage(`sent: ${corrected.length ? `correction of #${corrected.join(", #")}` : ""}`
    + `${corrected.length && (painted.length || boxed.length) ? "; " : ""}`
    + `${painted.length || boxed.length ? `new object #${[...painted, ...boxed].join(", #")}` : ""}`, "info");
  draw();
  return true;
}

async function removeObject(id) {
  if (S.session && S.objects.has(id) && S.phase === "streaming" && S.stream) {
    sendEdit({ type: "remove", object_id: id }); // answered with `removed`: the merged result without it
  } else if (S.session && S.objects.has(id)) {
    try {
      const res = await api.removeObject(S.session, id); // {"type": "removed", "objects": [ids still tracked]}
      const left = new Set(res.objects);
      for (const k of [...S.objects.keys()]) if (!left.has(k)) S.objects.delete(k);
      if (S.labels) for (let i = 0; i < S.labels.length; i++) if (S.labels[i] === id) S.labels[i] = 0;
      if (editor.ready) editor.reset(editor.width, editor.height, S.labels);
    } catch (err) {
      return showMessage(`object #${id} was not removed: ${api.describeError(err)}`);
    }
  } else {
    editor.clear(id);
  }
  renderObjects();
  draw();
}

/** Close the stream and delete the session (the service frees its tracker). */
async function stopSession() {
  const s = S.session;
  S.session = null;
  S.liveEdit = false;
  if (S.stream) { S.stream.close(); S.stream = null; }
  dropInflight();
  S.objects.clear();
  S.pendingFrame = undefined;
  if (s) {
    try {
      await api.deleteSession(s);
    } catch (err) {
      if (!(err instanceof api.ServiceError && err.status === 404)) showMessage(`deleting the session failed: ${api.describeError(err)}`);
    }
  }
}

async function stop() {
  await stopSession();
  if (!S.source) return setPhase("idle");
  if (S.source.kind === "camera") S.frozen = false;
  editor.reset(editor.width, editor.height);
  S.labels = null;
  setPhase("preview");
  renderObjects();
  draw();
}

async function submitJob() {
  if (!S.source || S.source.kind !== "file") return showMessage("a video job needs a video file as the source", "info");
  const { painted, boxed } = editor.edits([]);
  if (S.session || S.frameIndex !== 0) {
    return showMessage("a job starts from the video's first frame: choose the file again to draw on it", "info");
  }
  if (!painted.length && !boxed.length) return showMessage("draw the objects on the first frame first", "info");
  const mask = painted.length ? await encodeLabelPng(editor.only(painted), editor.width, editor.height) : null;
  const boxes = Object.fromEntries(boxed.map((id) => [id, editor.boxes[id]]));
  await jobs.run(S.source.file, mask, boxes);
}

// ---------------------------------------------------------------- input: pointer, keys, controls

function bindCanvas() {
  const cv = $("view");
  const editable = () => ["preview", "paused", "done", "streaming"].includes(S.phase) && (editor.ready || S.phase === "streaming");
  cv.addEventListener("pointerdown", async (ev) => {
    if (!editable()) return;
    if (S.phase === "streaming" && !S.liveEdit && S.still && S.still.bitmap) { // draw on the live view: no pause
      S.liveEdit = true;
      editor.reset(S.still.bitmap.width, S.still.bitmap.height, S.labels);
    }
    if (S.source && S.source.kind === "camera" && !S.frozen && S.phase === "preview") await freeze();
    cv.setPointerCapture(ev.pointerId);
    editor.down(view.toPixel(ev));
    draw();
  });
  cv.addEventListener("pointermove", (ev) => {
    if (!editable()) return;
    const p = view.toPixel(ev);
    if (editor.drag || editor.last) editor.move(p);
    draw(editor.tool === "box" ? {} : { cursor: { ...p, r: editor.radius } });
  });
  const finish = () => { if (editor.up()) renderObjects(); draw(); };
  cv.addEventListener("pointerup", finish);
  cv.addEventListener("pointercancel", finish);
}

/** What the page's controls and shortcuts do (controls.js binds them). */
function actions() {
  return {
    openCamera, openVideo: (f) => openSource(new VideoFileSource($("video"), f)),
    openImages: (files) => openSource(new ImagesSource(files)), openSession, start, pause, stop, submitJob,
    newObject, applyEdits, saveSession, clearEdits, hideMessage, setTool, draw, showMessage, removeObject,
    selectObject,
  };
}

function clearEdits() {
  editor.clear();
  S.liveEdit = false;
  if (S.source && S.source.kind === "camera" && S.phase === "preview") S.frozen = false;
  setPhase(S.phase);
  renderObjects();
  draw();
}

// ---------------------------------------------------------------- start-up: service info, URL parameters

async function loadInfo() {
  try {
    S.info = await api.getInfo();
  } catch (err) {
    $("model-info").textContent = "service unreachable";
    showMessage(`cannot read the service's info: ${api.describeError(err)}`, "error", [{ label: "Retry", run: loadInfo }]);
    return false;
  }
  setPalette(S.info.palette);
  jobs.setFormats(S.info.result_formats);
  $("key-form").hidden = !S.info.api_key_required;
  if (S.info.api_key_required && !api.apiKey()) {
    showMessage("this service needs an API key: enter it in the key field at the top", "info");
  }
  const m = chooseModel(S.info.models, params, () => loadInfo());
  S.boxInit = !!(m && m.box_init);
  $("tool-box").disabled = !S.boxInit;
  $("tool-box").title = S.boxInit ? "Drag a box (B)" : "this model has no box encoder: paint a mask";
  if (!S.boxInit && editor.tool === "box") setTool("brush");
  else setTool(editor.tool);
  $("model-info").textContent = m
    ? `model ${m.name || "?"} · ${m.box_init ? "box or mask start" : "mask start only"} · crop ${m.crop_size} · ${m.workers} worker${m.workers > 1 ? "s" : ""} · v${S.info.version}`
    : `no worker is live · v${S.info.version}`;
  if (!m) {
    showMessage("no worker is live: sessions cannot start until one is running", "error", [{ label: "Check again", run: loadInfo }]);
    setTimeout(() => { if (!S.info.models.length) loadInfo(); }, 5000);
  }
  return true;
}

async function applyUrlObjects() {
  const has = await placeUrlObjects(params, editor);
  renderObjects();
  draw();
  return has;
}

async function fromUrl() {
  applyUrlSettings(params, view);
  const source = params.get("source");
  if (source === "camera") {
    if (!(await openCamera())) return;
  } else if (source === "file" || source === "images") {
    showMessage(`choose the ${source === "file" ? "video file" : "images"} to segment (browsers open local files only on a click)`, "info");
    return;
  } else if (source) {
    return showMessage(`source=${source} is not known (camera, file or images)`);
  }
  if (!S.source) return;
  let hasObjects = false;
  try {
    if (S.source.kind === "camera" && (params.has("box") || params.has("mask"))) await freeze();
    hasObjects = await applyUrlObjects();
  } catch (err) {
    return showMessage(err.message);
  }
  if (params.get("start") === "1" && hasObjects) await start();
}

async function main() {
  bindControls(actions(), { editor, view });
  bindCanvas();
  bindKeys(actions(), { editor, view });
  setPhase("idle");
  setInterval(updateStatus, 250);
  window.addEventListener("pagehide", () => { if (S.session) stopSessionOnUnload(); });
  window.lwl = {  // for tests and embedding pages: read-only views of what the page did
    get phase() { return S.phase; },
    get counts() { return { ...S.counts }; },
    get objects() { return Object.fromEntries(S.objects); },
    get sessionId() { return S.session ? S.session.id : null; },
    get results() { return S.results; },
    // with ?record=1: every frame sent (index 0 = the first frame, with its mask and boxes) and every result
    sentBase64: (i) => api.blobToBase64(S.sent[i].blob),
    sentId: (i) => S.sent[i].id,
    initMaskBase64: () => (S.sent[0] && S.sent[0].mask ? api.blobToBase64(S.sent[0].mask) : null),
    initBoxes: () => (S.sent[0] ? S.sent[0].boxes : null),
    get sentCount() { return S.sent.length; },
    get labels() { return S.labels ? Array.from(S.labels) : null; },
    get frameSize() { return editor.ready ? [editor.height, editor.width] : null; },
  };
  if (await loadInfo()) await fromUrl();
  document.body.dataset.ready = "1";
}

/** Leaving the page: ask the service to free the session (best effort; the TTL frees it otherwise). */
function stopSessionOnUnload() {
  const s = S.session;
  fetch(`v1/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE", headers: { Authorization: `Bearer ${s.token}` }, keepalive: true });
}

main();
