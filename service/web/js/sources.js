// Where frames come from: the device camera (live), a local video file decoded by the browser (every
// frame, in order) or a list of images (in name order). Each gives frames as {bitmap, blob}: the bitmap
// is drawn, the blob (JPEG or PNG bytes) is what is sent to the service.

/** Encode a bitmap as JPEG (quality < 1) or PNG (quality >= 1, lossless). */
export async function encodeFrame(bitmap, quality) {
  const cv = new OffscreenCanvas(bitmap.width, bitmap.height);
  cv.getContext("2d").drawImage(bitmap, 0, 0);
  return quality >= 1 ? cv.convertToBlob({ type: "image/png" })
    : cv.convertToBlob({ type: "image/jpeg", quality });
}

/** The picture a <video> shows now, as an ImageBitmap. (createImageBitmap(video) is refused by some
 * builds for decoded files, so the frame goes through a canvas.) */
export function snapshot(video) {
  const cv = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  cv.getContext("2d").drawImage(video, 0, 0);
  return cv.transferToImageBitmap();
}

const nextVideoFrame = (video) => new Promise((resolve) => video.requestVideoFrameCallback((_now, meta) => resolve(meta)));

/** The device camera: live frames; masks should follow with the smallest lag (mode=latest). */
export class CameraSource {
  constructor(video) {
    this.kind = "camera";
    this.mode = "latest";
    this.video = video;
    this.stopped = false;
  }

  async open() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("this browser gives no camera access here (a camera needs https or localhost)");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    } catch (err) {
      throw new Error(`no camera: ${err.name === "NotAllowedError" ? "permission was refused" : err.message}`);
    }
    this.video.srcObject = this.stream;
    await this.video.play();
    await nextVideoFrame(this.video);
  }

  get width() { return this.video.videoWidth; }
  get height() { return this.video.videoHeight; }

  /** The camera's current picture. */
  async grab(quality) {
    const bitmap = snapshot(this.video);
    return { bitmap, blob: await encodeFrame(bitmap, quality) };
  }

  /** Calls onFrame() once per new camera frame until close(). */
  watch(onFrame) {
    const loop = () => {
      if (this.stopped) return;
      this.video.requestVideoFrameCallback(() => { onFrame(); loop(); });
    };
    loop();
  }

  close() {
    this.stopped = true;
    if (this.stream) for (const t of this.stream.getTracks()) t.stop();
    this.video.srcObject = null;
  }
}

/**
 * A local video file, decoded by the browser, every frame in order, at whatever pace the service
 * answers (mode=all). Frames are reached by seeking, never by playing, so a busy page or a slow
 * service cannot make playback run past a frame. After frame L, a seek to L + 1.5 x the last frame
 * spacing shows the next frame of a constant-rate video; when the answer is not one spacing later
 * (a variable rate, or the first step), the next frame is found by searching for the earliest time
 * that shows a frame after L.
 */
export class VideoFileSource {
  constructor(video, file) {
    this.kind = "file";
    this.mode = "all";
    this.video = video;
    this.file = file;
    this.index = -1;
    this.lastTime = 0;  // media time of the last frame handed out
    this.step = null;   // spacing between the last two frames
  }

  async open() {
    this.url = URL.createObjectURL(this.file);
    const v = this.video;
    v.srcObject = null;
    v.muted = true;
    v.src = this.url;
    await new Promise((resolve, reject) => {
      v.onloadeddata = resolve;
      v.onerror = () => reject(new Error(`this browser cannot decode ${this.file.name || "the file"}`
        + " as a video (try an mp4 with H.264 or a WebM)"));
    });
    v.onerror = null;
    if (!v.videoWidth) throw new Error(`${this.file.name} has no video track`);
    // A loaded video that was never presented draws as transparent black: present the first frame.
    const first = await this._seek(0);
    this.lastTime = first ? first.mediaTime : 0;
  }

  get width() { return this.video.videoWidth; }
  get height() { return this.video.videoHeight; }

  /** Seek to `t` (clamped to the video) and resolve with the metadata of the frame then on screen. */
  _seek(t) {
    const v = this.video;
    return new Promise((resolve) => {
      let seeked = false, meta = null, timer = null;
      const done = () => { clearTimeout(timer); resolve(meta); };
      v.requestVideoFrameCallback((_now, m) => { meta = m; if (seeked) done(); });
      v.addEventListener("seeked", () => {
        seeked = true;
        if (meta) done();
        else timer = setTimeout(done, 1000); // no frame presented (past the end)
      }, { once: true });
      v.currentTime = Math.min(Math.max(0, t), v.duration);
    });
  }

  /** The frame right after media time `last`, on screen, or null at the end. */
  async _after(last) {
    const dur = this.video.duration, after = (m) => m && m.mediaTime > last + 1e-5;
    if (this.step) {
      const m = await this._seek(last + 1.5 * this.step);
      if (after(m) && Math.abs(m.mediaTime - last - this.step) < 0.25 * this.step) return m;
    }
    let lo = last, hi = null, best = null, h = this.step || 0.02;
    while (best === null) { // grow until a frame after `last` shows up
      const t = Math.min(last + h, dur);
      const m = await this._seek(t);
      if (after(m)) { hi = t; best = m; } else if (t >= dur) return null; else { lo = t; h *= 2; }
    }
    let shown = best;
    while (hi - lo > 0.001) { // the earliest time that shows a frame after `last` shows the next frame
      const mid = (lo + hi) / 2;
      const m = await this._seek(mid);
      shown = m;
      if (after(m)) { hi = mid; best = m; } else lo = mid;
    }
    return shown === best ? best : this._seek(hi);
  }

  /** The next frame in order, or null after the last one. */
  async next(quality) {
    if (this.index >= 0) {
      const meta = await this._after(this.lastTime);
      if (!meta) return null;
      this.step = meta.mediaTime - this.lastTime;
      this.lastTime = meta.mediaTime;
    }
    this.index += 1;
    const bitmap = snapshot(this.video);
    return { bitmap, blob: await encodeFrame(bitmap, quality), index: this.index };
  }

  close() {
    this.video.removeAttribute("src");
    this.video.load();
    if (this.url) URL.revokeObjectURL(this.url);
  }
}

/** Images in name order; their own bytes are sent, so results equal `lwl segment` on the same files. */
export class ImagesSource {
  constructor(files) {
    this.kind = "images";
    this.mode = "all";
    this.files = [...files].filter((f) => /\.(jpe?g|png)$/i.test(f.name))
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.index = -1;
  }

  async open() {
    if (!this.files.length) throw new Error("no JPEG or PNG images among the chosen files");
    const first = await this._load(0);
    this.width = first.bitmap.width;
    this.height = first.bitmap.height;
    this.first = first;
  }

  async _load(i) {
    const file = this.files[i];
    try {
      return { bitmap: await createImageBitmap(file), blob: file, index: i, name: file.name };
    } catch {
      throw new Error(`${file.name} cannot be decoded as an image`);
    }
  }

  async next() {
    this.index += 1;
    if (this.index >= this.files.length) return null;
    if (this.index === 0) return this.first;
    return this._load(this.index);
  }

  close() {}
}
