// The page's buttons, inputs and keyboard shortcuts, bound to the actions main.js passes in (`a`): which
// control does what lives here, what each action does lives in main.js.
import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

/** Opacity in percent (0..100) on the slider and the view. */
function setOpacity(view, draw, percent) {
  $("opacity").value = Math.min(100, Math.max(0, percent));
  view.opacity = Number($("opacity").value) / 100;
  draw();
}

function setOutline(view, draw, on) {
  $("outline").checked = on;
  view.outline = on;
  draw();
}

/** Buttons and inputs of the side panel. */
export function bindControls(a, { editor, view }) {
  const files = (id, open) => $(id).addEventListener("change", (ev) => {
    if (ev.target.files.length) open(ev.target.files);
    ev.target.value = "";
  });
  $("src-camera").addEventListener("click", a.openCamera);
  files("src-file", (f) => a.openVideo(f[0]));
  files("src-images", a.openImages);
  files("src-folder", a.openImages);
  files("open-state", (f) => a.openSession(f[0]));
  const clicks = {
    "btn-start": a.start, "btn-pause": a.pause, "btn-stop": a.stop, "btn-job": a.submitJob,
    "btn-new-object": a.newObject, "btn-apply": a.applyEdits, "btn-save": a.saveSession, "btn-clear": a.clearEdits,
    "message-close": a.hideMessage, "help-btn": () => $("help").showModal(),
  };
  for (const [id, fn] of Object.entries(clicks)) $(id).addEventListener("click", fn);
  for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => a.setTool(b.dataset.tool));
  $("brush-size").addEventListener("input", (ev) => { editor.radius = Number(ev.target.value); });
  $("opacity").addEventListener("input", (ev) => setOpacity(view, a.draw, Number(ev.target.value)));
  $("outline").addEventListener("change", (ev) => setOutline(view, a.draw, ev.target.checked));
  $("api-key").value = api.apiKey();
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    api.setApiKey($("api-key").value.trim());
    a.showMessage(api.apiKey() ? "API key kept for this tab" : "API key cleared", "info");
  });
}

/** Keyboard shortcuts (docs/WEB.md); none while typing in a field or with a modifier held. */
export function bindKeys(a, { editor, view }) {
  const brush = (d) => { editor.radius = Math.min(80, Math.max(2, editor.radius + d)); $("brush-size").value = editor.radius; };
  const keys = {
    Enter: a.start, " ": a.pause, Escape: a.stop, b: () => a.setTool("box"), p: () => a.setTool("brush"),
    e: () => a.setTool("eraser"), n: a.newObject, c: a.applyEdits, j: a.submitJob,
    Delete: () => a.removeObject(editor.active), "[": () => brush(-2), "]": () => brush(2),
    ",": () => setOpacity(view, a.draw, Number($("opacity").value) - 10),
    ".": () => setOpacity(view, a.draw, Number($("opacity").value) + 10),
    o: () => setOutline(view, a.draw, !$("outline").checked), "?": () => $("help").showModal(),
  };
  document.addEventListener("keydown", (ev) => {
    if (ev.target.closest("input, textarea, select") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    const act = keys[k.length === 1 ? k.toLowerCase() : k] || (/^[1-9]$/.test(k) ? () => a.selectObject(Number(k)) : null);
    if (act) {
      ev.preventDefault();
      act();
    }
  });
}
