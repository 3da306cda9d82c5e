// Whole-video jobs: upload with a progress bar, job progress while a worker runs it, downloads when done.

import { describeError, jobStatus, submitJob } from "./api.js";

const $ = (id) => document.getElementById(id);

export class JobPanel {
  constructor(onError) {
    this.onError = onError;
    this.busy = false;
    this.labels = {}; // result format -> link text, from GET /v1/info
  }

  /** The result formats GET /v1/info lists (`result_formats`): their labels name the download links. */
  setFormats(formats) {
    this.labels = Object.fromEntries((formats || []).map((f) => [f.name, f.label]));
  }

  show(visible) { $("job").hidden = !visible; }

  _state(text) { $("job-state").textContent = text; }

  /** Upload `file` with the objects of its first frame, then follow the job until it is done or failed. */
  async run(file, maskPng, boxes) {
    if (this.busy) return;
    this.busy = true;
    this.show(true);
    $("job-upload").value = 0;
    $("job-progress").value = 0;
    $("job-links").replaceChildren();
    this._state(`uploading ${file.name}…`);
    try {
      const created = await submitJob(file, maskPng, boxes, (f) => { $("job-upload").value = f; }, $("profile").value);
      $("job-upload").value = 1;
      this.jobId = created.job_id;
      this._state(`job ${created.job_id.slice(0, 8)} queued`);
      await this._follow(created.job_id, created.token);
    } catch (err) {
      this._state(`failed: ${describeError(err)}`);
      this.onError(err);
    } finally {
      this.busy = false;
    }
  }

  async _follow(jobId, token) {
    let failures = 0;
    for (;;) {
      let st;
      try {
        st = await jobStatus(jobId, token);
        failures = 0;
      } catch (err) {
        failures += 1; // a restarting api: keep trying for a while, then say so
        if (failures >= 10) throw err;
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      $("job-progress").value = st.progress;
      const frames = st.frames_total ? ` ${st.frames_done}/${st.frames_total} frames` : "";
      this._state(`job ${jobId.slice(0, 8)} ${st.state}${frames}`);
      if (st.state === "done") return this._links(st.results, token);
      if (st.state === "failed") throw new Error(`the job failed: ${st.error || "no reason given"}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** Download links: a link cannot send a header, so the job token goes in the URL (`?token=`, which
   * the service accepts for result downloads without an API key); the page shows no such URL as text. */
  _links(results, token) {
    const links = Object.entries(results).map(([fmt, url]) => {
      const a = document.createElement("a");
      const u = new URL(url, location.href);
      if (token) u.searchParams.set("token", token);
      a.href = u.pathname + u.search; // same origin as the page, whatever host the api saw
      a.textContent = this.labels[fmt] || fmt;
      a.download = "";
      a.dataset.format = fmt;
      return a;
    });
    $("job-links").replaceChildren(...links);
  }
}
