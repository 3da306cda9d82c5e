// The page's settings: its URL parameters (docs/WEB.md: settings, the model, objects on the first frame)
// and the Settings panel's values.
import { labelsFromImage } from "./labels.js";

const $ = (id) => document.getElementById(id);

/** JPEG quality of the frames sent, 0.3..1 (default 0.9). */
export const quality = () => Math.min(1, Math.max(0.3, Number($("quality").value) || 0.9));

/** Frames at the service at once: 1 for a camera (least lag; the service also holds the newest one), 4 for
 * files (the worker never waits for the next frame); at most what the service allows (`cap`). */
export function inflightSetting(cap, sourceKind) {
  const auto = sourceKind === "camera" ? 1 : 4;
  return Math.min(cap, Math.max(1, Math.round(Number($("max-inflight").value) || auto)));
}

/** ?kiosk, ?opacity, ?outline, ?quality, ?max_inflight, ?crop onto the controls and the view. */
export function applyUrlSettings(params, view) {
  if (params.get("kiosk") === "1") document.body.classList.add("kiosk");
  if (params.has("opacity")) { $("opacity").value = Number(params.get("opacity")) * 100; view.opacity = Number(params.get("opacity")); }
  if (params.get("outline") === "0") { $("outline").checked = false; view.outline = false; }
  if (params.has("quality")) $("quality").value = params.get("quality");
  if (params.has("max_inflight")) $("max-inflight").value = params.get("max_inflight");
  if (params.has("crop")) $("crop").value = params.get("crop");
}

/** Fill the model select from /v1/info (keeping the choice, else ?profile=NAME, else the default);
 * the chosen model's entry. */
export function chooseModel(models, params, onChange) {
  const sel = $("profile");
  const want = sel.value || params.get("profile") || (models.find((x) => x.default) || models[0] || {}).name;
  sel.replaceChildren(...models.map((x) => new Option(x.default ? `${x.name} (default)` : x.name, x.name)));
  sel.value = models.some((x) => x.name === want) ? want : (models[0] || {}).name || "";
  sel.onchange = onChange;
  return models.find((x) => x.name === sel.value);
}

/** ?box=X,Y,W,H (repeatable, or ;-separated) -> objects 1, 2, ... */
function urlBoxes(params) {
  const out = [];
  for (const v of params.getAll("box")) {
    for (const part of v.split(";")) {
      const n = part.split(",").map(Number);
      if (n.length !== 4 || n.some((x) => !Number.isFinite(x)) || n[2] <= 0 || n[3] <= 0) {
        throw new Error(`box=${part} must be four numbers X,Y,W,H with W and H > 0`);
      }
      out.push(n);
    }
  }
  return out;
}

/** ?box= boxes (clipped to the frame) and ?mask= (a same-host or data: URL, its ids after the boxes') into
 * the editor; whether the URL gave any object. */
export async function placeUrlObjects(params, editor) {
  const boxes = urlBoxes(params);
  boxes.forEach((b, i) => {
    const x0 = Math.max(0, b[0]), y0 = Math.max(0, b[1]);
    const x1 = Math.min(editor.width, b[0] + b[2]), y1 = Math.min(editor.height, b[1] + b[3]);
    if (x1 - x0 < 1 || y1 - y0 < 1) throw new Error(`box=${b.join(",")} lies outside the ${editor.width}x${editor.height} frame`);
    editor.setBox(i + 1, [x0, y0, x1 - x0, y1 - y0]);
  });
  const maskUrl = params.get("mask");
  if (maskUrl) {
    let blob;
    try {
      const r = await fetch(maskUrl, { cache: "no-store" });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      blob = await r.blob();
    } catch (err) {
      throw new Error(`mask=${maskUrl.slice(0, 80)} could not be loaded (${err.message}); it must be on this host or a data: URL`);
    }
    const labels = await labelsFromImage(blob, editor.width, editor.height);
    const offset = boxes.length;
    for (let i = 0; i < labels.length; i++) if (labels[i] && !editor.labels[i]) editor.labels[i] = labels[i] + offset;
  }
  return boxes.length > 0 || !!maskUrl;
}
