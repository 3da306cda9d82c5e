// The documented REST + WebSocket API (docs/API.md), and nothing else: the page is its reference client.
// The session token lives in memory only: REST calls send it as a header, the WebSocket as its first
// message, so it never appears in a URL that the page shows, logs or stores.
// The API key (when GET /v1/info says one is required) is kept in sessionStorage (this tab only, gone when
// it closes) and sent as the X-API-Key header, never in a URL.

/** An answer of the service that is not a success: HTTP status, machine code and a sentence. */
export class ServiceError extends Error {
  constructor(status, code, detail) {
    super(detail);
    this.status = status;
    this.code = code;
    this.detail = detail;
  }
}

/** The close codes of the stream (docs/API.md) as sentences a person can act on. */
export const CLOSE_REASONS = {
  1000: "the stream ended normally",
  1001: "the service is going away (shutting down)",
  1006: "the connection to the service dropped",
  1009: "a frame was larger than the service accepts (LWL_MAX_UPLOAD_MB)",
  1011: "the service hit an internal error",
  1012: "the service is restarting",
  4400: "the service refused a stream option",
  4401: "the session token was not sent in time",
  4403: "the session token was refused",
  4404: "the session does not exist (deleted or expired)",
  4410: "the session ended while streaming (deleted or expired)",
  4503: "the session's worker stopped and no other worker is live",
};

const CODE_HINTS = {
  missing_api_key: "enter the service's API key in the key field at the top",
  wrong_api_key: "check the API key in the key field at the top",
  too_many_sessions: "stop one of this key's sessions or wait for one to expire",
  too_many_jobs: "wait for one of this key's jobs to finish",
  no_capacity: "every worker is busy; retry in a moment",
  no_worker: "no worker is running; start one (lwl worker) and retry",
  worker_lost: "the worker stopped while answering; retry",
  worker_timeout: "the worker did not answer in time",
  unknown_session: "the session expired or was deleted; start a new one",
};

/** One readable line for any error the page can meet. */
export function describeError(err) {
  if (err instanceof ServiceError) {
    const hint = CODE_HINTS[err.code];
    return `${err.detail}${hint && !err.detail.includes(hint) ? ` (${hint})` : ""} [${err.code}]`;
  }
  if (err && err.name === "AbortError") return "the service did not answer in time";
  if (err instanceof TypeError) return `cannot reach the service (${err.message})`;
  return String(err && err.message ? err.message : err);
}

async function errorFrom(response) {
  let body = null;
  try { body = await response.json(); } catch { /* not JSON: a proxy page or an empty body */ }
  if (body && typeof body.code === "string") return new ServiceError(response.status, body.code, String(body.detail));
  return new ServiceError(response.status, `http_${response.status}`,
    `the service answered HTTP ${response.status} ${response.statusText}`.trim());
}

const KEY_STORE = "lwl-api-key";

/** The API key this tab uses ("" = none). */
export function apiKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

/** Keep (or, with "", forget) the API key for this tab. */
export function setApiKey(key) {
  try {
    if (key) sessionStorage.setItem(KEY_STORE, key);
    else sessionStorage.removeItem(KEY_STORE);
  } catch { /* storage blocked: the key cannot be kept */ }
}

function authHeaders(token) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const key = apiKey();
  if (key) headers["X-API-Key"] = key;
  return headers;
}

/** fetch + JSON with a deadline; non-2xx answers throw ServiceError. */
export async function request(path, { method = "GET", body = null, token = null, timeoutMs = 120000 } = {}) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const headers = authHeaders(token);
    const r = await fetch(path, { method, body, headers, signal: ctl.signal, cache: "no-store" });
    if (!r.ok) throw await errorFrom(r);
    return r.status === 204 ? null : await r.json();
  } finally {
    clearTimeout(timer);
  }
}

/** POST a form with upload progress (fetch has none): onProgress(fraction). */
export function uploadForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [k, v] of Object.entries(authHeaders(null))) xhr.setRequestHeader(k, v);
    xhr.responseType = "text";
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable) onProgress(ev.loaded / ev.total); };
    xhr.onerror = () => reject(new TypeError("network error during the upload"));
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* handled below */ }
      if (xhr.status >= 200 && xhr.status < 300 && body) return resolve(body);
      if (body && body.code) return reject(new ServiceError(xhr.status, body.code, String(body.detail)));
      reject(new ServiceError(xhr.status, `http_${xhr.status}`, `the service answered HTTP ${xhr.status}`));
    };
    xhr.send(form);
  });
}

export const getInfo = () => request("v1/info", { timeoutMs: 10000 });

/** POST /v1/sessions: frame Blob, optional mask PNG Blob, boxes {id: [x, y, w, h]}. */
export function createSession(frame, mask, boxes, cropSize, profile) {
  const form = new FormData();
  form.append("image", frame, frame.type === "image/png" ? "frame.png" : "frame.jpg");
  if (mask) form.append("mask", mask, "mask.png");
  if (boxes && Object.keys(boxes).length) form.append("boxes", JSON.stringify(boxes));
  if (cropSize) form.append("crop_size", cropSize);
  if (profile) form.append("profile", profile);
  form.append("format", "png");
  return request("v1/sessions", { method: "POST", body: form });
}

export function deleteSession(s) {
  return request(`v1/sessions/${encodeURIComponent(s.id)}`, { method: "DELETE", token: s.token, timeoutMs: 30000 });
}

export function correctSession(s, maskPng) {
  const form = new FormData();
  form.append("mask", maskPng, "correction.png");
  return request(`v1/sessions/${encodeURIComponent(s.id)}/corrections`, { method: "POST", body: form, token: s.token });
}

export function addObjects(s, maskPng, boxes) {
  const form = new FormData();
  if (maskPng) form.append("mask", maskPng, "objects.png");
  if (boxes && Object.keys(boxes).length) form.append("boxes", JSON.stringify(boxes));
  return request(`v1/sessions/${encodeURIComponent(s.id)}/objects`, { method: "POST", body: form, token: s.token });
}

/** GET /v1/sessions/{id}/state: the saved session (tracker state) as a Blob. */
export async function getState(s) {
  const r = await fetch(`v1/sessions/${encodeURIComponent(s.id)}/state`, { headers: authHeaders(s.token), cache: "no-store" });
  if (!r.ok) throw await errorFrom(r);
  return r.blob();
}

/** POST /v1/sessions with a saved session (a File from "Open session") instead of a frame and objects. */
export function createSessionFromState(file) {
  const form = new FormData();
  form.append("state", file, "session.lwlstate");
  form.append("format", "png");
  return request("v1/sessions", { method: "POST", body: form });
}

export function removeObject(s, objectId) {
  return request(`v1/sessions/${encodeURIComponent(s.id)}/objects/${objectId}`, { method: "DELETE", token: s.token });
}

export function submitJob(video, maskPng, boxes, onProgress, profile) {
  const form = new FormData();
  form.append("video", video, video.name || "video.mp4");
  if (maskPng) form.append("mask", maskPng, "mask.png");
  if (boxes && Object.keys(boxes).length) form.append("boxes", JSON.stringify(boxes));
  if (profile) form.append("profile", profile);
  form.append("init_frame", "0");
  return uploadForm("v1/jobs", form, onProgress);
}

/** A job's status; `token` is the job token from submitJob's answer. */
export const jobStatus = (jobId, token) => request(`v1/jobs/${encodeURIComponent(jobId)}`, { token, timeoutMs: 15000 });

/** The stream URL of a created session without its token (the token goes in the first message). */
export function streamUrl(wsUrl, options) {
  const u = new URL(wsUrl, location.href);
  u.searchParams.delete("token");
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  for (const [k, v] of Object.entries(options)) u.searchParams.set(k, String(v));
  return u.toString();
}

/**
 * One WebSocket stream of a session. Frames and edits go out as JSON envelopes with an `id`, so every answer
 * (result, error, skipped; corrected, added, removed) names what it belongs to, in `mode=latest` too.
 * Callbacks: onReady(msg), onAnswer(msg), onClose(code, reason).
 */
export class Stream {
  constructor(url, token, handlers) {
    this.handlers = handlers;
    this.ready = false;
    this.closedByUs = false;
    this.ws = new WebSocket(url);
    this.ws.onopen = () => this.ws.send(JSON.stringify({ type: "auth", token }));
    this.ws.onmessage = (ev) => this._message(ev);
    this.ws.onclose = (ev) => handlers.onClose(ev.code, ev.reason, this.closedByUs);
    this.readyTimer = setTimeout(() => {
      if (!this.ready) { this.ws.close(4000, "no ready message"); }
    }, 15000);
  }

  _message(ev) {
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    if (msg.type === "ready") {
      this.ready = true;
      clearTimeout(this.readyTimer);
      this.handlers.onReady(msg);
    } else if (["result", "skipped", "error", "corrected", "added", "removed"].includes(msg.type)) {
      this.handlers.onAnswer(msg);
    }
  }

  /** Send one frame (a Blob of JPEG/PNG bytes) with the page's id for it. False when the socket has closed
   * (it may close while the frame is encoded): nothing was sent, and onClose reports the close. */
  async send(id, blob) {
    const b64 = await blobToBase64(blob);
    if (this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ type: "frame", id, image: b64 }));
    return true;
  }

  /** Send one edit ({type: "correct" | "add" | "remove", ...}) with the page's id for it: it applies after the
   * frames sent before it (docs/API.md, "Edits"). False when the socket has closed. */
  sendEdit(id, msg) {
    if (this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ ...msg, id }));
    return true;
  }

  /** Ask the service to answer what is in flight, then close. */
  finish() {
    if (this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify({ type: "close" }));
  }

  close() {
    this.closedByUs = true;
    clearTimeout(this.readyTimer);
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client closed");
  }
}

export async function blobToBase64(blob) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

export function base64ToBytes(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}
