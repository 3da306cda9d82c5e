// What the page says: its message box, the buttons each phase allows, and the status line (sent, answered,
// frames/s, latency, model time). Reads the page's state object; changes nothing but the DOM.
const $ = (id) => document.getElementById(id);

export function showMessage(text, kind = "error", actions = []) {
  const box = $("message");
  box.className = kind === "info" ? "message info" : "message";
  $("message-text").textContent = text;
  $("message-actions").replaceChildren(...actions.map(({ label, run }) => {
    const b = document.createElement("button");
    b.textContent = label;
    b.addEventListener("click", () => { hideMessage(); run(); });
    return b;
  }));
  box.hidden = false;
  box.dataset.kind = kind;
}

export function hideMessage() { $("message").hidden = true; }

/** The buttons and the state label of `S.phase`. */
export function renderPhase(S) {
  const phase = S.phase;
  const live = ["starting", "streaming", "pausing", "paused", "finishing"].includes(phase);
  $("st-state").textContent = phase === "preview" && S.frozen ? "frozen: draw objects" : phase;
  $("btn-start").disabled = !S.source || live || !!S.session;
  $("btn-pause").disabled = !["streaming", "paused"].includes(phase);
  $("btn-pause").textContent = phase === "paused" ? "Resume" : "Pause";
  $("btn-stop").disabled = !S.session;
  $("btn-apply").disabled = !["paused", "done", "streaming"].includes(phase);
  $("btn-save").disabled = !S.session || !["streaming", "paused", "done"].includes(phase);
  $("open-state").disabled = !S.source || !!S.session || live;
  $("btn-job").hidden = !(S.source && S.source.kind === "file");
  $("btn-job").disabled = live;
  $("placeholder").hidden = phase !== "idle";
  document.body.dataset.phase = phase;
}

/** The status line: counts, answers per second over the last 3 s, the last latency and model time. */
export function renderStatus(S, now) {
  S.answerTimes = S.answerTimes.filter((t) => now - t < 3000);
  const fps = S.answerTimes.length > 1 ? (S.answerTimes.length - 1) / ((S.answerTimes.at(-1) - S.answerTimes[0]) / 1000) : 0;
  $("st-sent").textContent = S.counts.sent;
  $("st-answered").textContent = S.counts.answered;
  $("st-skipped").textContent = S.counts.skipped;
  $("st-fps").textContent = (Number.isFinite(fps) ? fps : 0).toFixed(1);
  $("st-latency").textContent = S.latency == null ? "–" : S.latency.toFixed(0);
  $("st-compute").textContent = S.compute == null ? "–" : S.compute.toFixed(0);
  $("st-frame").textContent = S.frameIndex == null ? "–" : S.frameIndex;
}
