// Edits inside the live stream and saved sessions (docs/API.md, "Edits" and "Saved sessions"): what the
// editor holds becomes `correct` / `add` messages sent without pausing, each applied after the frames
// sent before it; a session's tracker state downloads as a file and opens as a new session.

import { blobToBase64 } from "./api.js";
import { encodeLabelPng } from "./labels.js";

/** The stream messages of the editor's edits: a correction of tracked ids, then new objects (mask and/or boxes). */
export async function editMessages(editor, { corrected, painted, boxed }) {
  const w = editor.width, h = editor.height;
  const png = async (ids) => blobToBase64(await encodeLabelPng(editor.only(ids), w, h));
  const out = [];
  if (corrected.length) out.push({ type: "correct", mask: await png(corrected) });
  if (painted.length || boxed.length) {
    const msg = { type: "add" };
    if (painted.length) msg.mask = await png(painted);
    if (boxed.length) msg.boxes = Object.fromEntries(boxed.map((id) => [id, editor.boxes[id]]));
    out.push(msg);
  }
  return out;
}

/** Offer a Blob as a file download (the saved session). */
export function download(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 30000);
}
