// The object list of the side panel: one row per tracked or pending object, with its colour, number,
// score (or what is pending for it) and a remove button.
import { cssColour } from "./labels.js";

function span(className, text) {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}

/** What the row says of an object: its score (lost when it has no box), or what is drawn for it. */
function stateOf(id, tracked, pending) {
  if (tracked) {
    const lost = tracked.box == null;
    const text = (lost ? "lost" : `score ${tracked.score.toFixed(2)}`) + (pending.corrected.includes(id) ? " · edited" : "");
    return span(lost ? "score lost" : "score", text);
  }
  const what = pending.boxed.includes(id) ? "new (box)" : pending.painted.includes(id) ? "new (mask)" : "selected: draw it";
  return span("score pending", what);
}

/** Rows for `ids` into `ul`; `objects` maps tracked ids to {score, box}, `pending` is the editor's edits. */
export function renderObjectList(ul, ids, { active, objects, pending, onSelect, onRemove }) {
  ul.replaceChildren(...ids.map((id) => {
    const li = document.createElement("li");
    li.dataset.id = id;
    li.className = id === active ? "selected" : "";
    const sw = span("swatch", "");
    sw.style.background = cssColour(id);
    const rm = document.createElement("button");
    rm.className = "ghost";
    rm.textContent = "✕";
    rm.title = "Remove this object (Delete)";
    rm.addEventListener("click", (ev) => { ev.stopPropagation(); onRemove(id); });
    li.append(sw, span("num", `#${id}`), stateOf(id, objects.get(id), pending), rm);
    li.addEventListener("click", () => onSelect(id));
    return li;
  }));
}
