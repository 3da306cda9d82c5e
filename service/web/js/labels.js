// Label maps (one byte per pixel: 0 = background, k = object k) to and from the indexed PNGs the service
// reads and writes. The colours are the service's palette (GET /v1/info), so object k has one colour
// everywhere: in the page, in `lwl segment` output and in job results.

let PALETTE = [];            // [[r, g, b], ...] 256 entries
let COLOUR_TO_ID = new Map(); // (r << 16 | g << 8 | b) -> id

export function setPalette(palette) {
  PALETTE = palette;
  COLOUR_TO_ID = new Map(palette.map(([r, g, b], i) => [(r << 16) | (g << 8) | b, i]));
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

/** PNG bytes of a label map (indexed with the palette) -> {labels, width, height}. */
export async function decodeLabelPng(bytes) {
  const bmp = await createImageBitmap(new Blob([bytes], { type: "image/png" }),
    { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const { width, height } = bmp;
  const cv = new OffscreenCanvas(width, height);
  const ctx = cv.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bmp, 0, 0);
  bmp.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const labels = new Uint8Array(width * height);
  for (let i = 0, p = 0; i < labels.length; i++, p += 4) {
    labels[i] = COLOUR_TO_ID.get((rgba[p] << 16) | (rgba[p + 1] << 8) | rgba[p + 2]) || 0;
  }
  return { labels, width, height };
}

/** An image mask given by URL or Blob (indexed PNG, or any image: non-black = object 1) at a frame's size. */
export async function labelsFromImage(blob, width, height) {
  const bmp = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
  const cv = new OffscreenCanvas(width, height);
  const ctx = cv.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false; // nearest neighbour: ids stay ids when the mask is scaled
  ctx.drawImage(bmp, 0, 0, width, height);
  bmp.close();
  const rgba = ctx.getImageData(0, 0, width, height).data;
  const labels = new Uint8Array(width * height);
  let paletted = true;
  for (let i = 0, p = 0; i < labels.length; i++, p += 4) {
    const key = (rgba[p] << 16) | (rgba[p + 1] << 8) | rgba[p + 2];
    const id = COLOUR_TO_ID.get(key);
    if (id === undefined) { paletted = false; break; }
    labels[i] = id === 255 ? 0 : id;
  }
  if (!paletted) { // a greyscale or binary picture: anything not black is object 1
    for (let i = 0, p = 0; i < labels.length; i++, p += 4) {
      labels[i] = rgba[p] + rgba[p + 1] + rgba[p + 2] > 96 ? 1 : 0;
    }
  }
  return labels;
}

/** The ids present in a label map, ascending (255, the "ignore" value, is not an object). */
export function idsIn(labels) {
  const seen = new Uint8Array(256);
  for (let i = 0; i < labels.length; i++) seen[labels[i]] = 1;
  const ids = [];
  for (let k = 1; k < 255; k++) if (seen[k]) ids.push(k);
  return ids;
}
