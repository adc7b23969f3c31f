// The demo page: every panel calls the public API exactly as an outside client would.
// Paths are relative, so the page also works behind a proxy that serves it under a prefix.

const $ = (id) => document.getElementById(id);

// The key lives in the input field only: never written to storage or cookies.
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(detail);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function api(path, { body, json, signal } = {}) {
  const headers = authHeaders();
  let payload = body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(json);
  }
  const response = await fetch(path, { method: body || json ? "POST" : "GET", headers, body: payload, signal });
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch {
      // not JSON: keep the status text
    }
    throw new ApiError(response.status, String(detail), response.headers.get("Retry-After"));
  }
  return response;
}

function describe(error, endpoint) {
  if (!(error instanceof ApiError)) return `cannot reach the service: ${error.message}`;
  if (error.status === 401) return "this service needs an API key: enter it at the top right";
  if (error.status === 404) return `${endpoint} is not available on this server (404)`;
  if (error.status === 503) {
    return `the service is busy or starting${error.retryAfter ? `; retry in ${error.retryAfter} s` : ""}`;
  }
  return `${error.status}: ${error.detail}`;
}

function setStatus(id, text, isError = false) {
  const element = $(id);
  element.textContent = text;
  element.classList.toggle("error", isError);
}

async function showImage(img, response) {
  const url = URL.createObjectURL(await response.blob());
  await new Promise((resolve, reject) => {
    img.onload = resolve;
    img.onerror = reject;
    img.src = url;
  });
  if (img.dataset.url) URL.revokeObjectURL(img.dataset.url);
  img.dataset.url = url;
  img.hidden = false;
}

// Calls fn once input pauses for `ms`, and at least every `maxWait` ms while it keeps coming
// (so the answer follows a long stroke as it is drawn).
function debounce(fn, ms, maxWait = Infinity) {
  let timer;
  let firstCall = null;
  return (...args) => {
    clearTimeout(timer);
    firstCall ??= Date.now();
    const run = () => {
      firstCall = null;
      fn(...args);
    };
    if (Date.now() - firstCall >= maxWait) run();
    else timer = setTimeout(run, ms);
  };
}

// Runs `task` with an AbortSignal, cancelling the previous run still in flight:
// only the newest drawing's answer is ever shown.
function latestOnly(task) {
  let controller = null;
  return async (...args) => {
    controller?.abort();
    controller = new AbortController();
    const mine = controller;
    try {
      await task(mine.signal, ...args);
    } catch (error) {
      if (error.name !== "AbortError" && !mine.signal.aborted) throw error;
    }
  };
}

// --- drawing pads -----------------------------------------------------------------------

class Pad {
  constructor(canvas, onChange) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.onChange = onChange;
    this.hasInk = false;
    this.last = null;
    this.clear(false);
    canvas.addEventListener("pointerdown", (event) => this.start(event));
    canvas.addEventListener("pointermove", (event) => this.move(event));
    for (const name of ["pointerup", "pointercancel", "pointerleave"]) {
      canvas.addEventListener(name, () => this.end());
    }
  }

  clear(notify = true) {
    this.context.fillStyle = "#000";
    this.context.fillRect(0, 0, this.canvas.width, this.canvas.height);
    this.hasInk = false;
    if (notify) this.onChange(this);
  }

  point(event) {
    const box = this.canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - box.left) * this.canvas.width) / box.width,
      y: ((event.clientY - box.top) * this.canvas.height) / box.height,
    };
  }

  start(event) {
    event.preventDefault();
    this.canvas.setPointerCapture?.(event.pointerId);
    this.last = this.point(event);
    this.stroke(this.last);
  }

  move(event) {
    if (!this.last) return;
    event.preventDefault();
    this.stroke(this.point(event));
  }

  end() {
    this.last = null;
  }

  stroke(to) {
    const ctx = this.context;
    ctx.strokeStyle = "#fff";
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    // About MNIST's stroke width relative to the digit once it is scaled into 20x20.
    ctx.lineWidth = this.canvas.width / 12;
    ctx.beginPath();
    ctx.moveTo(this.last.x, this.last.y);
    ctx.lineTo(to.x + 0.01, to.y);
    ctx.stroke();
    this.last = to;
    this.hasInk = true;
    this.onChange(this);
  }

  png() {
    return new Promise((resolve) => this.canvas.toBlob(resolve, "image/png"));
  }
}

// --- draw: reconstruction and anomaly score ----------------------------------------------

const reconstructAndScore = latestOnly(async (signal, pad) => {
  if (!pad.hasInk) {
    $("recon-img").hidden = true;
    $("recon-empty").hidden = false;
    for (const id of ["score-value", "score-percentile", "recon-loss"]) $(id).textContent = "-";
    $("score-verdict").textContent = "-";
    $("score-verdict").className = "badge";
    setStatus("draw-status", "");
    return;
  }
  const png = await pad.png();
  const pair = new FormData();
  pair.append("file", png, "digit.png");
  const batch = new FormData();
  batch.append("files", png, "digit.png");
  setStatus("draw-status", "asking the model...");
  try {
    const [reconstruction, scored] = await Promise.all([
      api("reconstruct?layout=pair&scale=6", { body: pair, signal }),
      api("anomaly-score", { body: batch, signal }),
    ]);
    const report = await scored.json();
    const result = report.results[0];
    await showImage($("recon-img"), reconstruction);
    $("recon-empty").hidden = true;
    $("recon-loss").textContent = `${Number(reconstruction.headers.get("X-Reconstruction-Loss")).toFixed(1)} nats`;
    $("score-value").textContent = result.score.toFixed(2);
    $("score-percentile").textContent = `${result.percentile.toFixed(1)}%`;
    const verdict = $("score-verdict");
    verdict.textContent = result.is_anomaly ? "anomaly" : "looks like a digit";
    verdict.className = `badge ${result.is_anomaly ? "bad" : "ok"}`;
    setStatus(
      "draw-status",
      `score ${report.score}, flagged above ${report.threshold.toFixed(2)} (${report.threshold_source})`,
    );
  } catch (error) {
    if (signal.aborted) throw error;
    setStatus("draw-status", describe(error, "/reconstruct"), true);
  }
});

// --- samples ------------------------------------------------------------------------------

const sample = latestOnly(async (signal) => {
  const seed = Number.parseInt($("seed").value, 10);
  const temperature = Number.parseFloat($("temperature").value);
  const request = { n: 64, nrow: 8, temperature };
  if (Number.isFinite(seed) && seed >= 0) request.seed = seed;
  setStatus("sample-status", "sampling...");
  try {
    const response = await api("sample", { json: request, signal });
    await showImage($("sample-img"), response);
    const used = response.headers.get("X-Seed");
    $("sample-img").dataset.seed = used;
    setStatus("sample-status", `64 digits, seed ${used}, temperature ${temperature.toFixed(1)}`);
  } catch (error) {
    if (signal.aborted) throw error;
    setStatus("sample-status", describe(error, "/sample"), true);
  }
});

// --- interpolation ------------------------------------------------------------------------

const interpolate = latestOnly(async (signal) => {
  if (!startPad.hasInk || !endPad.hasInk) {
    setStatus("interp-status", "draw both a start and an end digit");
    return;
  }
  const form = new FormData();
  form.append("start", await startPad.png(), "start.png");
  form.append("end", await endPad.png(), "end.png");
  const steps = $("steps").value;
  const method = $("method").value;
  setStatus("interp-status", "interpolating...");
  try {
    const response = await api(`interpolate?steps=${steps}&method=${method}&scale=3`, { body: form, signal });
    await showImage($("interp-img"), response);
    setStatus("interp-status", `${steps} steps, ${method}; the ends are the reconstructions of your digits`);
  } catch (error) {
    if (signal.aborted) throw error;
    $("interp-img").hidden = true;
    setStatus("interp-status", describe(error, "/interpolate"), true);
  }
});

async function showModel() {
  try {
    const card = await (await api("model")).json();
    const latent = card.latent_dim ?? card.architecture?.latent_dim;
    $("model-info").textContent = `model ${card.model_id}${latent ? `, latent size ${latent}` : ""}`;
  } catch (error) {
    $("model-info").textContent = error.status === 401 ? "model: API key needed" : "model: unavailable";
  }
}

const pad = new Pad($("pad"), debounce(reconstructAndScore, 150, 400));
const startPad = new Pad($("pad-start"), debounce(() => interpolate(), 400));
const endPad = new Pad($("pad-end"), debounce(() => interpolate(), 400));

$("pad-clear").addEventListener("click", () => pad.clear());
$("pad-start-clear").addEventListener("click", () => startPad.clear());
$("pad-end-clear").addEventListener("click", () => endPad.clear());
$("interp-go").addEventListener("click", () => interpolate());
$("steps").addEventListener("change", () => interpolate());
$("method").addEventListener("change", () => interpolate());
$("seed").addEventListener("change", () => sample());
$("seed-next").addEventListener("click", () => {
  $("seed").value = String(Math.floor(Math.random() * 1e9));
  sample();
});
$("temperature").addEventListener("input", () => {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(1);
});
$("temperature").addEventListener("change", () => sample());
$("api-key").addEventListener(
  "input",
  debounce(() => {
    showModel();
    sample();
    if (pad.hasInk) reconstructAndScore(pad);
  }, 300),
);

showModel();
sample();
