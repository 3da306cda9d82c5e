// The stage: a frame with its label map drawn over it (object colours, opacity, outlines), plus what the
// editor is drawing (boxes, brush cursor). Drawing is separate from state: render() draws what it is given.

import { colourOf } from "./labels.js";

/** Overlay pixels: object colour at `opacity` inside, opaque on the boundary when `outline` is on. */
export function overlayImage(labels, width, height, opacity, outline) {
  const img = new ImageData(width, height);
  const px = img.data;
  const inner = Math.round(opacity * 255);
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      const id = labels[i];
      if (id === 0 || id === 255) continue;
      const [r, g, b] = colourOf(id);
      const p = 4 * i;
      px[p] = r; px[p + 1] = g; px[p + 2] = b;
      let edge = false;
      if (outline) {
        edge = x === 0 || y === 0 || x === width - 1 || y === height - 1
          || labels[i - 1] !== id || labels[i + 1] !== id || labels[i - width] !== id || labels[i + width] !== id;
      }
      px[p + 3] = edge ? 255 : inner;
    }
  }
  return img;
}

/** Draws on the visible canvas; keeps the canvas at the frame's own pixel size (CSS scales it). */
export class View {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.layer = new OffscreenCanvas(1, 1);
    this.layerCtx = this.layer.getContext("2d");
    this.opacity = 0.5;
    this.outline = true;
    window.addEventListener("resize", () => this.fit());
  }

  /** frame: ImageBitmap/canvas; labels: Uint8Array or null; boxes: {id: [x, y, w, h]}; extra: drawing hints. */
  render(frame, labels, boxes = {}, extra = {}) {
    if (!frame) return;
    const w = frame.width, h = frame.height;
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
      this.fit();
    }
    const ctx = this.ctx;
    ctx.drawImage(frame, 0, 0);
    if (labels && labels.length === w * h) {
      if (this.layer.width !== w || this.layer.height !== h) {
        this.layer.width = w;
        this.layer.height = h;
      }
      this.layerCtx.putImageData(overlayImage(labels, w, h, this.opacity, this.outline), 0, 0);
      ctx.drawImage(this.layer, 0, 0);
    }
    const lw = Math.max(1.5, w / 400);
    for (const [id, box] of Object.entries(boxes)) {
      const [r, g, b] = colourOf(Number(id));
      ctx.strokeStyle = `rgb(${r},${g},${b})`;
      ctx.lineWidth = lw;
      ctx.setLineDash(extra.dashed ? [6 * lw, 4 * lw] : []);
      ctx.strokeRect(box[0], box[1], box[2], box[3]);
      ctx.setLineDash([]);
      ctx.fillStyle = `rgb(${r},${g},${b})`;
      ctx.font = `${Math.round(12 * lw)}px system-ui, sans-serif`;
      ctx.fillText(String(id), box[0] + 2 * lw, box[1] + 12 * lw);
    }
    for (const tag of extra.tags || []) { // object numbers at the top-left of their boxes
      const [r, g, bl] = colourOf(tag.id);
      const size = Math.round(11 * lw);
      ctx.font = `600 ${size}px system-ui, sans-serif`;
      const text = String(tag.id);
      const tw = ctx.measureText(text).width + size * 0.6;
      const x = Math.min(Math.max(0, tag.x), w - tw), y = Math.min(Math.max(0, tag.y - size * 1.3), h - size * 1.3);
      ctx.fillStyle = `rgb(${r},${g},${bl})`;
      ctx.fillRect(x, y, tw, size * 1.3);
      ctx.fillStyle = r + g + bl > 380 ? "#000" : "#fff";
      ctx.fillText(text, x + size * 0.3, y + size);
    }
    if (extra.cursor) {
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.lineWidth = lw;
      ctx.beginPath();
      ctx.arc(extra.cursor.x, extra.cursor.y, extra.cursor.r, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  /** Scale the canvas (CSS pixels) to fill its stage without distorting the frame. */
  fit() {
    const stage = this.canvas.parentElement;
    const kiosk = document.body.classList.contains("kiosk");
    const maxH = Math.max(160, window.innerHeight - (kiosk ? 0 : window.innerWidth <= 760 ? 260 : 170));
    const scale = Math.min(stage.clientWidth / this.canvas.width, maxH / this.canvas.height);
    this.canvas.style.width = `${Math.floor(this.canvas.width * scale)}px`;
    this.canvas.style.height = `${Math.floor(this.canvas.height * scale)}px`;
  }

  /** Canvas pixel under a pointer event (the canvas is scaled by CSS). */
  toPixel(ev) {
    const r = this.canvas.getBoundingClientRect();
    return {
      x: ((ev.clientX - r.left) / r.width) * this.canvas.width,
      y: ((ev.clientY - r.top) / r.height) * this.canvas.height,
    };
  }
}
