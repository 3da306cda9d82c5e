// Label maps (one byte per pixel: 0 = background, k = object k) to and from the indexed PNGs the service
// reads and writes. The colours are the service's palette (GET /v1/info), so object k has one colour
// everywhere: in the page, in `lwl segment` output and in job results.

let PALETTE = []; // [[r, g, b], ...] 256 entries

export function setPalette(palette) {
  PALETTE = palette;
}

export const colourOf = (id) => PALETTE[id] || [255, 255, 255];
export const cssColour = (id) => `rgb(${colourOf(id).join(",")})`;

// ---------------------------------------------------------------- PNG writing (indexed, 8 bit)

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  view.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
  return out;
}

async function zlib(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** Label map (Uint8Array, row-major) -> indexed PNG Blob with the palette: what the service reads. */
export async function encodeLabelPng(labels, width, height) {
  const raw = new Uint8Array((width + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width + 1)] = 0; // filter: none
    raw.set(labels.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
  }
  const ihdr = new Uint8Array(13);
  const v = new DataView(ihdr.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  ihdr.set([8, 3, 0, 0, 0], 8); // 8 bit, palette colour, deflate, adaptive filtering, no interlace
  const plte = new Uint8Array(768);
  PALETTE.forEach(([r, g, b], i) => plte.set([r, g, b], 3 * i));
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  const parts = [signature, chunk("IHDR", ihdr), chunk("PLTE", plte), chunk("IDAT", await zlib(raw)),
    chunk("IEND", new Uint8Array(0))];
  return new Blob(parts, { type: "image/png" });
}

// ---------------------------------------------------------------- PNG reading

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

const paeth = (a, b, c) => {
  const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
};

/**
 * A PNG's samples, read by us rather than through a canvas: a canvas gives colours, and colours do
 * not give ids back (the palette repeats grey levels). Returns {width, height, colorType, channels,
 * samples}: one byte per sample, 8-bit and 16-bit (high byte) images, 1/2/4-bit indexed or grey.
 */
export async function readPng(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 33 || view.getUint32(0) !== 0x89504e47) throw new Error("not a PNG file");
  let pos = 8, width = 0, height = 0, depth = 0, colorType = 0, interlace = 0;
  const idat = [];
  while (pos + 8 <= bytes.length) {
    const len = view.getUint32(pos), type = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, pos + 8 + len);
    if (type === "IHDR") {
      width = view.getUint32(pos + 8); height = view.getUint32(pos + 12);
      depth = data[8]; colorType = data[9]; interlace = data[12];
    } else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    pos += 12 + len;
  }
  if (interlace) throw new Error("interlaced PNG masks are not supported");
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[colorType];
  if (!channels || !width || !height) throw new Error("unsupported PNG");
  const raw = await inflate(new Uint8Array(await new Blob(idat).arrayBuffer()));
  const bitsPerPixel = channels * depth, stride = Math.ceil((width * bitsPerPixel) / 8);
  const bpp = Math.max(1, bitsPerPixel >> 3);
  const rows = new Uint8Array(stride * height);
  for (let y = 0, src = 0; y < height; y++) {
    const filter = raw[src++], row = rows.subarray(y * stride, (y + 1) * stride);
    const prev = y ? rows.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? row[x - bpp] : 0, b = prev[x], c = x >= bpp ? prev[x - bpp] : 0;
      const v = raw[src++];
      row[x] = (filter === 0 ? v : filter === 1 ? v + a : filter === 2 ? v + b : filter === 3 ? v + ((a + b) >> 1)
        : v + paeth(a, b, c)) & 0xff;
    }
  }
  const samples = new Uint8Array(width * height * channels);
  for (let y = 0, i = 0; y < height; y++) {
    const row = rows.subarray(y * stride, (y + 1) * stride);
    for (let k = 0; k < width * channels; k++, i++) {
      if (depth === 8) samples[i] = row[k];
      else if (depth === 16) samples[i] = row[2 * k];
      else { // 1, 2 or 4 bits: samples packed from the high bits
        const bit = k * depth;
        samples[i] = (row[bit >> 3] >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
      }
    }
  }
  return { width, height, colorType, channels, samples };
}

/** A label PNG of the service (indexed: sample = object id) -> {labels, width, height}. */
export async function decodeLabelPng(bytes) {
  const png = await readPng(bytes);
  if (png.colorType !== 3) throw new Error("a label PNG must be indexed");
  return { labels: png.samples, width: png.width, height: png.height };
}

/** Ids of a mask picture, as the service reads masks: indexed = ids; grey with several levels = ids, else
 * non-zero = object 1; colour = non-black is object 1. */
function maskIds(png) {
  const { samples, channels, colorType } = png;
  const n = png.width * png.height, out = new Uint8Array(n);
  if (colorType === 3) {
    for (let i = 0; i < n; i++) out[i] = samples[i] === 255 ? 0 : samples[i];
    return out;
  }
  if (colorType === 0 || colorType === 4) {
    const levels = new Set();
    for (let i = 0; i < n && levels.size < 3; i++) levels.add(samples[i * channels]);
    for (let i = 0; i < n; i++) {
      const v = samples[i * channels];
      out[i] = levels.size > 2 ? (v === 255 ? 0 : v) : v > 0 ? 1 : 0;
    }
    return out;
  }
  return colourIds(samples, channels, n);
}

/** Colour masks, as the service reads them: one colour = object 1; several palette colours = their ids;
 * other colours = 1, 2, ... in order of first appearance (row by row). Transparent = background. */
function colourIds(samples, channels, n) {
  const keys = new Int32Array(n), order = [];
  const seen = new Map();
  for (let i = 0; i < n; i++) {
    const p = i * channels;
    const alpha = channels === 4 ? samples[p + 3] : 255;
    const k = alpha ? (samples[p] << 16) | (samples[p + 1] << 8) | samples[p + 2] : 0;
    keys[i] = k;
    if (k && !seen.has(k)) { seen.set(k, 0); order.push(k); }
  }
  if (order.length > 32) throw new Error(`the mask has ${order.length} colours: save it as an indexed PNG`);
  const byColour = new Map();
  for (let id = 255; id >= 0; id--) { const [r, g, b] = PALETTE[id] || [0, 0, 0]; byColour.set((r << 16) | (g << 8) | b, id); }
  const pal = order.map((k) => byColour.get(k) || 0);
  const usePalette = order.length > 1 && pal.every((id) => id >= 1 && id <= 254);
  order.forEach((k, i) => seen.set(k, order.length === 1 ? 1 : usePalette ? pal[i] : i + 1));
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) if (keys[i]) out[i] = seen.get(keys[i]);
  return out;
}

/** A first-frame mask given as a Blob (a PNG as the service reads it, or any picture: non-black = object 1),
 * scaled to the frame with nearest neighbour so ids stay ids. */
export async function labelsFromImage(blob, width, height) {
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let ids, w, h;
  try {
    const png = await readPng(bytes);
    ids = maskIds(png);
    w = png.width;
    h = png.height;
  } catch { // not a PNG we read: let the browser decode it; anything not black is the object
    const bmp = await createImageBitmap(blob);
    w = bmp.width;
    h = bmp.height;
    const cv = new OffscreenCanvas(w, h);
    const ctx = cv.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bmp, 0, 0);
    bmp.close();
    const rgba = ctx.getImageData(0, 0, w, h).data;
    ids = new Uint8Array(w * h);
    for (let i = 0, p = 0; i < ids.length; i++, p += 4) ids[i] = rgba[p] + rgba[p + 1] + rgba[p + 2] > 96 ? 1 : 0;
  }
  if (w === width && h === height) return ids;
  const out = new Uint8Array(width * height);
  for (let y = 0; y < height; y++) {
    const sy = Math.min(h - 1, Math.floor(((y + 0.5) * h) / height));
    for (let x = 0; x < width; x++) out[y * width + x] = ids[sy * w + Math.min(w - 1, Math.floor(((x + 0.5) * w) / width))];
  }
  return out;
}

/** The ids present in a label map, ascending (255, the "ignore" value, is not an object). */
export function idsIn(labels) {
  const seen = new Uint8Array(256);
  for (let i = 0; i < labels.length; i++) seen[labels[i]] = 1;
  const ids = [];
  for (let k = 1; k < 255; k++) if (seen[k]) ids.push(k);
  return ids;
}
