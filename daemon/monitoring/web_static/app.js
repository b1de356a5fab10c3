// The monitor page: follows the daemon's server-sent events (a snapshot, then deltas; the protocol
// is livetomo.daemon.monitor_state.apply_delta) and redraws at most once per animation frame.
"use strict";

let model = null;
let pending = false;
const $ = (id) => document.getElementById(id);

function applyDelta(delta) {
  if (delta.reset) {
    if (!model || model.version < delta.reset.version) model = delta.reset;
    return;
  }
  if (!model || delta.version <= model.version) return;
  for (const [k, v] of Object.entries(delta.set || {})) model[k] = v;
  for (const [k, v] of Object.entries(delta.merge || {})) model[k] = Object.assign({}, model[k] || {}, v);
  // a coalesced delta may hold frames the snapshot already had: keep only newer ones
  const append = delta.append || {}, frames = append.frames || [];
  const versions = append.frame_versions || frames.map(() => delta.version);
  const fresh = frames.filter((f, i) => versions[i] > model.version);
  if (fresh.length) model.frames = model.frames.concat(fresh).slice(-model.max_frames);
  model.version = delta.version;
}

function scheduleRender() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

function connect() {
  const source = new EventSource("events");
  source.addEventListener("snapshot", (e) => { model = JSON.parse(e.data); scheduleRender(); });
  source.addEventListener("delta", (e) => { applyDelta(JSON.parse(e.data)); scheduleRender(); });
  source.onopen = () => { setText("connection", "live"); $("connection").className = "tag on"; };
  source.onerror = () => { setText("connection", "reconnecting…"); $("connection").className = "tag off"; };
}

// --- formatting ---------------------------------------------------------------------------

function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function num(v, digits) { return v === null || v === undefined || !Number.isFinite(v) ? "–" : v.toFixed(digits); }
// A quantity for people: three significant digits, large values with an SI prefix (4.71 MGy).
function quantity(v, units) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const prefixes = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  const [scale, prefix] = prefixes.find(([s]) => Math.abs(v) >= s) || [1, ""];
  return `${Number((v / scale).toPrecision(3))} ${prefix}${units || ""}`.trim();
}
function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return `${h}:${String(m).padStart(2, "0")}:${String(sec).padStart(2, "0")}`;
}
function bar(id, done, planned) {
  const f = planned ? Math.min(1, Math.max(0, done / planned)) : 0;
  $(id).style.width = `${(100 * f).toFixed(1)}%`;
}

// --- channel ------------------------------------------------------------------------------

function channels() {
  const names = new Set(((model.run || {}).channels) || []);
  for (const c of Object.keys(model.projections || {})) names.add(c);
  for (const c of Object.keys(model.slices || {})) names.add(c);
  return Array.from(names);
}

function chosenChannel() {
  const select = $("channel"), names = channels();
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("\u0000") !== names.join("\u0000")) {
    const keep = select.value || decodeURIComponent((location.hash.match(/channel=([^&]+)/) || [])[1] || "");
    select.replaceChildren(...names.map((n) => new Option(n, n)));
    if (names.includes(keep)) select.value = keep;
  }
  return select.value;
}

// --- sections -----------------------------------------------------------------------------

function renderHeader() {
  const run = model.run;
  setText("run-plan", run ? run.plan_name || "run (joined mid-run)" : "no run yet");
  setText("run-method", run && run.method ? run.method : "");
  setText("run-uid", run && run.uid ? run.uid.slice(0, 8) : "");
  const [state, kind] = runState(model);
  setText("run-state", state); $("run-state").className = `tag ${kind}`;
}

// The run's state in words; the twin of livetomo.daemon.monitoring.run_state (same rules).
function runState(m) {
  const run = m.run;
  if (!run) return ["", "live"];
  if (run.ended) {
    const word = { success: "completed", abort: "aborted", fail: "failed" }[run.exit_status] || String(run.exit_status);
    if (run.error) return [`ended: ${word}, ${run.error}`, "bad"];
    if (run.complete) return [`ended: ${word}`, "ok"];
    return [`ended incomplete: ${word}`, run.exit_status === "fail" ? "bad" : "warn"];
  }
  const f = run.finishing;
  if (f) {
    const count = f.step !== null && f.total && f.total > 1 ? ` ${f.step}/${f.total}` : "";
    return [`finishing: ${f.text}${count}`, "live"];
  }
  const suspended = (m.health || {}).suspended || [];
  if (suspended.length) return [`suspended: ${suspended.join(", ")}`, "warn"];
  if ((m.health || {}).re_state === "paused") return ["paused", "warn"];
  return ["running", "live"];
}

function renderProgress() {
  const p = model.progress || {};
  bar("bar-frames", p.frames_done, p.frames_planned);
  bar("bar-angles", p.angles_done, p.angles_planned);
  bar("bar-dose", p.dose_so_far, p.dose_planned);
  const unit = (model.run || {}).progress_unit || "frames";
  setText("progress-frames-label", unit);
  $("row-angles").hidden = !p.angles_planned;  // a milling run has stages, no angles
  $("row-dose").hidden = !p.dose_units;
  for (const card of document.querySelectorAll(".frames-only")) card.hidden = unit !== "frames" || (card.id === "viewer" && viewer.available === false);
  setText("progress-frames", `${p.frames_done ?? 0} / ${p.frames_planned ?? "?"}`);
  setText("progress-angles", `${p.angles_done ?? 0} / ${p.angles_planned ?? "?"}`);
  const units = p.dose_units || "";
  setText("progress-dose", p.dose_so_far === null || p.dose_so_far === undefined ? "–"
    : `${quantity(p.dose_so_far, units)} of ${p.dose_planned ? quantity(p.dose_planned, units) : "?"} planned`);
  setText("progress-elapsed", duration(p.elapsed_s));
  setText("progress-eta", duration(p.eta_s));
  setText("progress-angle", p.last_angle === null || p.last_angle === undefined ? "–" : `${num(p.last_angle, 2)}°`);
  setText("progress-low", String(p.low_quality || 0));
  $("progress-low").classList.toggle("low", (p.low_quality || 0) > 0);
  const frames = currentFrames(), last = frames.length ? frames[frames.length - 1] : null;
  const unc = last && last.unc !== null && last.unc !== undefined ? ` ± ${num(last.unc, 2)}` : "";
  setText("progress-shift", last && last.dy !== null ? `${num(last.dy, 2)}, ${num(last.dx, 2)}${unc} px` : "–");
  const q = last ? `FWHM ${num(last.fwhm_y, 1)}×${num(last.fwhm_x, 1)} px, PSR ${num(last.psr, 1)}` : "–";
  setText("progress-quality", last && last.ok === false ? `${q}  FLAGGED` : q);
  $("progress-quality").classList.toggle("low", !!last && last.ok === false);
}

// The chosen channel, or else the first one that has this kind of preview (the pipeline may
// reconstruct fewer channels than it previews), so a panel is never blank without a reason.
function previewChannel(section, channel) {
  const have = model[section] || {};
  if (have[channel]) return channel;
  return Object.keys(have)[0] || channel;
}

function renderProjection(chosen) {
  const channel = previewChannel("projections", chosen), p = (model.projections || {})[channel];
  const note = channel !== chosen ? ` (no ${chosen} preview)` : "";
  setText("projection-caption", p ? `${channel}, frame ${p.seq}, ${num(p.angle, 2)}°${note}` : "");
  if (!p) return;
  Plot.image($("projection-raw"), p.raw);
  Plot.image($("projection-aligned"), p.aligned);
}

function renderSlices(chosen) {
  const channel = previewChannel("slices", chosen), s = (model.slices || {})[channel];
  const note = channel !== chosen ? ` (${chosen} is not reconstructed)` : "";
  setText("slices-caption", s ? `${channel}, ${s.n_projections} projections, point ${JSON.stringify(s.point)}${note}` : "");
  for (const plane of ["xy", "xz", "yz"]) {
    const canvas = $(`slice-${plane}`);
    if (s && Plot.image(canvas, s[plane])) canvas.dataset.nprojections = String(s.n_projections);
  }
}

// The current value of each frame (the daemon re-estimates earlier frames as the scan grows; the
// runout message carries the whole table by seq), else the value the frame had when it arrived.
// A frame older than the table's newest but missing from it was replaced (re-acquired, or its
// step repeated after a pause): it leaves the plots and is counted apart.
function currentFrames() {
  const r = model.runout || {}, bySeq = new Map();
  if (r.seqs) r.seqs.forEach((seq, i) => bySeq.set(seq, i));
  const newest = r.seqs && r.seqs.length ? Math.max(...r.seqs) : -1;
  return model.frames.filter((f) => bySeq.has(f.seq) || f.seq > newest).map((f) => {
    const i = bySeq.get(f.seq);
    if (i === undefined) return f;
    const shift = r.shifts[i] || [f.dy, f.dx];
    const ok = r.ok && r.ok[i] !== null ? r.ok[i] : f.ok;
    const unc = r.uncertainty_px ? r.uncertainty_px[i] : f.unc;
    return Object.assign({}, f, { dy: shift[0], dx: shift[1], ok, unc, first_dy: f.dy, first_dx: f.dx });
  });
}

function renderTrace() {
  const frames = currentFrames(), r = model.runout || {};
  const angles = frames.map((f) => f.angle), marked = frames.map((f) => f.ok === false);
  const planned = ((model.run || {}).angles_planned) || [];
  const xr = planned.length ? Plot.finiteRange([planned, angles], 0.02) : undefined;
  const fitA = r.fit_angles || [], fit = r.fit || [];
  const shiftOf = (f, i, axis) => (axis ? f.dx : f.dy);
  const panel = (axis, name, color) => ({
    ylabel: `${name} shift (px)`, xrange: xr, xlabel: axis === 0 ? "angle (°)" : "",  // y is the lower panel
    series: [
      { label: `measured ${name}`, x: angles, y: frames.map((f, i) => shiftOf(f, i, axis)), color, marked },
      { label: "fitted runout", x: fitA, y: fit.map((v) => v[axis]), color: "#f5b942", kind: "line" },
    ],
    hlines: axis === 1 && r.centre_px !== null && r.centre_px !== undefined
      ? [{ y: r.centre_px, color: "#3ecf8e", label: `rotation centre ${num(r.centre_px, 2)} px` }] : [],
  });
  const canvas = $("trace");
  canvas.dataset.points = String(Plot.draw(canvas, [panel(1, "x", "#4fa3ff"), panel(0, "y", "#c58bff")]));
  canvas.dataset.fitPoints = String(fit.length);
  const axis = r.tilt_axis_deg !== null && r.tilt_axis_deg !== undefined ? `, tilt axis ${num(r.tilt_axis_deg, 2)}°` : "";
  const replaced = model.frames.length - frames.length;
  setText("trace-caption", frames.length
    ? `${frames.length} frames (current estimates), ${marked.filter(Boolean).length} flagged (red ×)`
      + `${replaced ? `, ${replaced} replaced (re-acquired or repeated)` : ""}${axis}` : "");
  canvas.dataset.replaced = String(replaced);
  canvas.dataset.flagged = String(marked.filter(Boolean).length);
}

function renderQuality() {
  const frames = currentFrames(), seq = frames.map((f) => f.seq), marked = frames.map((f) => f.ok === false);
  const canvas = $("quality");
  canvas.dataset.points = String(Plot.draw(canvas, [
    { ylabel: "peak FWHM (px)", series: [
      { label: "FWHM y", x: seq, y: frames.map((f) => f.fwhm_y), color: "#c58bff", marked },
      { label: "FWHM x", x: seq, y: frames.map((f) => f.fwhm_x), color: "#4fa3ff", marked }] },
    { ylabel: "peak / sidelobe", series: [
      { label: "PSR", x: seq, y: frames.map((f) => f.psr), color: "#3ecf8e", marked }] },
    { ylabel: "uncertainty (px)", xlabel: "frame", series: [
      { label: "1σ of the current shift", x: seq, y: frames.map((f) => f.unc), color: "#f5b942", marked }] },
  ]));
  const low = frames.filter((f) => f.ok === false).map((f) => f.seq);
  setText("quality-caption", low.length ? `flagged now: frames ${low.slice(-12).join(", ")}${low.length > 12 ? " …" : ""}` : "");
}

function renderHealth() {
  const h = model.health || {};
  setText("health-re", h.re_state || "–");
  setText("health-queue", h.queue_length === null || h.queue_length === undefined ? "–" : String(h.queue_length));
  setText("health-received", String(h.frames_received ?? "–"));
  setText("health-rejected", String(h.frames_rejected ?? "–"));
  $("health-rejected").classList.toggle("low", (h.frames_rejected || 0) > 0);
  setText("health-reasons", Object.entries(h.rejected_by_reason || {}).map(([k, v]) => `${k}: ${v}`).join(", "));
  const stages = h.stages || {}, latest = h.latency_ms || {};
  const names = Array.from(new Set([...Object.keys(stages), ...Object.keys(latest)]));
  $("health-stages").tBodies[0].replaceChildren(...names.map((name) => {
    const s = stages[name] || {}, tr = document.createElement("tr");
    for (const [text, cls] of [[name, ""], [String(s.count ?? "–"), "num"],
      [s.mean_latency_ms === undefined ? "–" : `${num(s.mean_latency_ms, 1)} ms`, "num"],
      [latest[name] === undefined ? "–" : `${num(latest[name], 1)} ms`, "num"],
      [String(s.queue_depth ?? "–"), "num"], [s.last_error || "", ""]]) {
      const td = document.createElement("td"); td.textContent = text; td.className = cls; tr.append(td);
    }
    return tr;
  }));
  const errors = (h.last_errors || []).concat((h.monitor_errors || []).map((e) => `monitor: ${e}`));
  $("health-errors").replaceChildren(...errors.slice().reverse().map((e) => {
    const li = document.createElement("li"); li.textContent = e; return li;
  }));
}

function renderMilling() {
  const m = model.milling;
  $("milling").hidden = !m;
  if (!m) return;
  const colors = ["#4fa3ff", "#f5b942", "#3ecf8e", "#c58bff", "#ff8a5d"];
  const series = m.stages.map((s, i) => ({
    label: s.stage, x: s.readings.map((r) => r[0]), y: s.readings.map((r) => r[1]), color: colors[i % colors.length],
  }));
  const hlines = m.stages.map((s, i) => ({ y: s.target_nm, color: colors[i % colors.length], label: `${s.stage} target` }));
  Plot.draw($("milling-plot"), [{ ylabel: "thickness (nm)", xlabel: "elapsed (s)", series, hlines }]);
  $("milling-table").tBodies[0].replaceChildren(...m.stages.map((s) => {
    const last = s.readings.length ? s.readings[s.readings.length - 1][1] : null;
    const tr = document.createElement("tr");
    for (const text of [s.stage, `${num(s.target_nm, 0)} nm`, `${num(last, 0)} nm`,
      s.current_A === null ? "–" : `${num(s.current_A * 1e9, 3)} nA`, String(s.readings.length)]) {
      const td = document.createElement("td"); td.textContent = text; tr.append(td);
    }
    return tr;
  }));
}

function renderCorrelative() {
  const c = model.correlative;
  $("correlative").hidden = !c;
  if (!c) return;
  Plot.image($("correlative-fused"), c.fused);
  setText("correlative-sigma-t", `${num(c.sigma_t_nm, 0)} nm`);
  setText("correlative-sigma-x", `${num(c.sigma_x_nm, 0)} nm`);
  setText("correlative-sigma-f", `${num(c.sigma_f_nm, 0)} nm`);
  setText("correlative-sigma-a", `${num(c.sigma_a_nm, 0)} nm`);
}

function renderRunEnd() {
  const run = model.run;
  $("run-end").hidden = !(run && run.ended);
  if (!run || !run.ended) return;
  const unit = run.progress_unit || "frames";
  setText("run-end-text", `${runState(model)[0]}; ${run.frames_received ?? 0} of ${run.frames_expected ?? "?"} ${unit} `
    + `${unit === "frames" ? "received" : "done"}${run.complete ? " (complete)" : " (INCOMPLETE)"}`);
  const pictures = (run.pictures || []).filter((p) => p.endsWith(".png"));
  const others = (run.pictures || []).length - pictures.length;
  const items = [run.file, ...pictures].filter(Boolean);
  if (others > 0) items.push(`and ${others} more files beside them`);
  $("run-end-files").replaceChildren(...items.map((path) => {
    const li = document.createElement("li"); li.textContent = path; return li;
  }));
}

// --- the steerable viewer: slices and sinograms computed by the daemon on request -----------

const viewer = { key: null, busy: false, again: false, range: null, lastProjections: null, sinogramKey: null };

function viewerSize(channel) {
  const s = (model.slices || {})[channel];
  if (!s || !s.xy) return null;
  const [ny, nx] = s.xy.shape, nz = s.xz ? s.xz.shape[0] : ny;
  return { xy: nz, xz: ny, yz: nx, rows: nz };  // positions along each plane's normal (previews may be downsampled)
}

async function fetchJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function viewerOptions() {
  const auto = $("viewer-auto").checked, lo = parseFloat($("viewer-min").value), hi = parseFloat($("viewer-max").value);
  return { range: !auto && Number.isFinite(lo) && Number.isFinite(hi) && hi > lo ? [lo, hi] : null, cmap: $("viewer-cmap").value };
}

async function requestViews(force) {
  // the chosen channel, else the reconstructed one (as the slice previews do)
  const channel = previewChannel("slices", chosenChannel()), axis = $("viewer-axis").value;
  const index = $("viewer-index").value, row = $("sinogram-row").value;
  const s = (model.slices || {})[channel];
  const ended = !!(model.run || {}).ended;  // once more when the run has ended
  const key = `${channel}|${axis}|${index}|${row}|${s ? s.n_projections : ""}|${ended}`;
  if (!s || (!force && key === viewer.key)) return;
  if (viewer.busy) { viewer.again = true; return; }
  viewer.busy = true; viewer.key = key;
  try {
    const q = (o) => Object.entries(o).map(([k, v]) => `${k}=${encodeURIComponent(v)}`).join("&");
    const [slice, sino] = await Promise.all([
      fetchJSON(`view/slice?${q({ channel, axis, index })}`),
      fetchJSON(`view/sinogram?${q({ channel, row })}`),
    ]);
    viewer.slice = slice; viewer.sinogram = sino;
    $("viewer-index").max = String(slice.size - 1);
    $("sinogram-row").max = String(sino.rows - 1);
    drawViews();
    setText("viewer-error", "");
  } catch (err) {
    setText("viewer-error", `view: ${err.message}`);
  } finally {
    viewer.busy = false;
    if (viewer.again) { viewer.again = false; setTimeout(() => requestViews(false), 50); }
  }
}

function drawViews() {
  const slice = viewer.slice, sino = viewer.sinogram;
  if (!slice) return;
  const opts = viewerOptions();
  const range = Plot.image($("viewer-slice"), slice.image, opts);
  $("viewer-slice").dataset.axis = slice.axis; $("viewer-slice").dataset.index = String(slice.index);
  if (Array.isArray(range)) {
    Plot.colorbar($("viewer-colorbar"), range[0], range[1], opts.cmap, slice.units || "");
    if ($("viewer-auto").checked) { $("viewer-min").value = Plot.label(range[0]); $("viewer-max").value = Plot.label(range[1]); }
  }
  setText("viewer-index-value", `${slice.index} / ${slice.size - 1}`);
  setText("viewer-slice-caption", `${slice.channel} ${slice.axis} plane at ${slice.index} (normal ${{ xy: "z", xz: "y", yz: "x" }[slice.axis]}), `
    + `${slice.n_projections} projections, computed by the daemon`);
  setText("viewer-caption", `${slice.channel}${slice.units ? `, ${slice.units}` : ""}`);
  if (sino) {
    Plot.image($("viewer-sinogram"), sino.image, { cmap: opts.cmap });
    $("viewer-sinogram").dataset.row = String(sino.row);
    setText("sinogram-row-value", `${sino.row} / ${sino.rows - 1}`);
    const a = sino.angles;
    setText("viewer-sinogram-caption", `sinogram of detector row ${sino.row}: ${a.length} angles `
      + `${a.length ? `${num(a[0], 1)}° to ${num(a[a.length - 1], 1)}°` : ""} down, aligned columns across`);
  }
}

for (const id of ["viewer-axis", "viewer-index", "sinogram-row"]) {
  $(id).addEventListener("input", () => {
    if (id === "viewer-axis") { $("viewer-index").value = "0"; viewer.key = null; }
    requestViews(true);
  });
}
for (const id of ["viewer-auto", "viewer-min", "viewer-max", "viewer-cmap"]) {
  $(id).addEventListener("input", () => {
    if (id !== "viewer-auto" && id !== "viewer-cmap") $("viewer-auto").checked = false;
    drawViews();
  });
}

function renderViewer() {
  // refresh when the reconstruction has more projections, at most a few times a second
  if (viewer.available === undefined) {  // a page served without a daemon has no views to ask for
    viewer.available = null;
    fetchJSON("healthz").then((h) => { viewer.available = !!h.views; $("viewer").hidden = !h.views; scheduleRender(); })
      .catch(() => { viewer.available = undefined; });
    return;
  }
  if (!viewer.available) return;
  const run = model.run || {};
  if (run.finishing && !run.ended) return;  // the daemon answers views again when the run has ended
  const now = Date.now();
  if (viewer.lastRequest && now - viewer.lastRequest < 500) return;
  viewer.lastRequest = now;
  if (!viewer.slice) {  // first view: the middle of the volume
    const size = viewerSize(previewChannel("slices", chosenChannel()));
    if (size) { $("viewer-index").max = String(size.xy - 1); $("viewer-index").value = String(Math.floor(size.xy / 2));
      $("sinogram-row").max = String(size.rows - 1); $("sinogram-row").value = String(Math.floor(size.rows / 2)); }
  }
  requestViews(false);
}

function render() {
  if (!model) return;
  const channel = chosenChannel();
  renderHeader();
  renderProgress();
  renderProjection(channel);
  renderSlices(channel);
  renderTrace();
  renderQuality();
  if (!$("viewer").hidden) renderViewer();
  renderHealth();
  renderMilling();
  renderCorrelative();
  renderRunEnd();
  document.body.dataset.version = String(model.version);
}

$("channel").addEventListener("change", () => {
  history.replaceState(null, "", `#channel=${encodeURIComponent($("channel").value)}`);
  scheduleRender();
});
connect();
