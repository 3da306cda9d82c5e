// What the user draws on a still frame: painted label maps (brush / eraser) and boxes, per object id.
// Before a session these become its first objects; while it is paused, painted pixels of tracked
// objects become a correction and anything of a new id becomes an added object.

export class Editor {
  constructor() {
    this.tool = "box";
    this.radius = 16;
    this.active = 1;
    this.reset(0, 0);
  }

  /** Start editing a frame of w x h, from a label map of what is already tracked (or nothing). */
  reset(width, height, labels = null) {
    this.width = width;
    this.height = height;
    this.labels = labels ? labels.slice() : new Uint8Array(width * height);
    this.base = labels ? labels.slice() : new Uint8Array(width * height);
    this.boxes = {};
    this.drag = null;
    this.last = null;
  }

  get ready() { return this.width > 0 && this.height > 0; }

  /** Pointer down at a pixel: starts a box or a stroke. */
  down(pt) {
    if (!this.ready) return;
    if (this.tool === "box") {
      this.drag = { x0: pt.x, y0: pt.y, x1: pt.x, y1: pt.y };
    } else {
      this.last = pt;
      this._dab(pt);
    }
  }

  move(pt) {
    if (this.drag) {
      this.drag.x1 = pt.x;
      this.drag.y1 = pt.y;
    } else if (this.last) {
      const d = Math.hypot(pt.x - this.last.x, pt.y - this.last.y);
      const steps = Math.max(1, Math.ceil(d / Math.max(1, this.radius / 3)));
      for (let s = 1; s <= steps; s++) {
        const t = s / steps;
        this._dab({ x: this.last.x + (pt.x - this.last.x) * t, y: this.last.y + (pt.y - this.last.y) * t });
      }
      this.last = pt;
    }
  }

  /** Pointer up: a dragged box of at least 3 x 3 pixels becomes the active object's box. */
  up() {
    if (this.drag) {
      const box = this.dragBox();
      this.drag = null;
      if (box && box[2] >= 3 && box[3] >= 3) {
        this.setBox(this.active, box);
        return true;
      }
      return false;
    }
    const painted = this.last !== null;
    this.last = null;
    return painted;
  }

  /** The box being dragged, clipped to the frame, as [x, y, w, h] integers. */
  dragBox() {
    if (!this.drag) return null;
    const clip = (v, hi) => Math.min(Math.max(v, 0), hi);
    const x0 = clip(Math.min(this.drag.x0, this.drag.x1), this.width);
    const x1 = clip(Math.max(this.drag.x0, this.drag.x1), this.width);
    const y0 = clip(Math.min(this.drag.y0, this.drag.y1), this.height);
    const y1 = clip(Math.max(this.drag.y0, this.drag.y1), this.height);
    return [Math.round(x0), Math.round(y0), Math.round(x1 - x0), Math.round(y1 - y0)];
  }

  /** An object given by a box drops its painted pixels: one object, one kind of start. */
  setBox(id, box) {
    this.boxes[id] = box;
    for (let i = 0; i < this.labels.length; i++) if (this.labels[i] === id && this.base[i] !== id) this.labels[i] = this.base[i];
  }

  _dab(pt) {
    const r = this.radius, id = this.active, w = this.width, h = this.height;
    const erase = this.tool === "eraser";
    if (!erase) delete this.boxes[id];
    const x0 = Math.max(0, Math.floor(pt.x - r)), x1 = Math.min(w - 1, Math.ceil(pt.x + r));
    const y0 = Math.max(0, Math.floor(pt.y - r)), y1 = Math.min(h - 1, Math.ceil(pt.y + r));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        if ((x + 0.5 - pt.x) ** 2 + (y + 0.5 - pt.y) ** 2 > r * r) continue;
        const i = y * w + x;
        if (erase) { if (this.labels[i] === id) this.labels[i] = 0; } else this.labels[i] = id;
      }
    }
  }

  /** Drop the unsent edits (painted pixels and boxes) of one object, or of all. */
  clear(id = null) {
    for (let i = 0; i < this.labels.length; i++) {
      if (id === null || this.labels[i] === id || this.base[i] === id) this.labels[i] = this.base[i];
    }
    if (id === null) this.boxes = {};
    else delete this.boxes[id];
  }

  /**
   * What changed against the tracked state: `corrected` = tracked ids whose pixels changed, `painted` =
   * new ids that have pixels, `boxed` = new ids started by a box.
   */
  edits(tracked) {
    const known = new Set(tracked);
    const changed = new Set(), present = new Set();
    for (let i = 0; i < this.labels.length; i++) {
      const a = this.labels[i], b = this.base[i];
      if (a) present.add(a);
      if (a !== b) { if (a) changed.add(a); if (b) changed.add(b); }
    }
    const corrected = [...changed].filter((id) => known.has(id)).sort((a, b) => a - b);
    const painted = [...present].filter((id) => !known.has(id) && !(id in this.boxes)).sort((a, b) => a - b);
    const boxed = Object.keys(this.boxes).map(Number).filter((id) => !known.has(id)).sort((a, b) => a - b);
    return { corrected, painted, boxed };
  }

  /** A label map holding only the given ids (everything else background). */
  only(ids) {
    const keep = new Uint8Array(256);
    for (const id of ids) keep[id] = 1;
    const out = new Uint8Array(this.labels.length);
    for (let i = 0; i < out.length; i++) if (keep[this.labels[i]]) out[i] = this.labels[i];
    return out;
  }

  /** Which ids were erased completely (a correction cannot say "nothing": those must be removed). */
  vanished(ids) {
    const left = new Set();
    for (let i = 0; i < this.labels.length; i++) left.add(this.labels[i]);
    return ids.filter((id) => !left.has(id));
  }
}
