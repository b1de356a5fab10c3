// Small canvas plotting and image routines for the monitor page (no external libraries: the
// beamline network has no internet access).
"use strict";

const Plot = (() => {
  const AXIS = "#8a94a3", GRID = "#262c35", TEXT = "#c9d1db";

  function finiteRange(arrays, pad) {
    let lo = Infinity, hi = -Infinity;
    for (const values of arrays) for (const v of values) {
      if (v === null || !Number.isFinite(v)) continue;
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    if (!Number.isFinite(lo)) return [0, 1];
    if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
    const p = (hi - lo) * (pad || 0);
    return [lo - p, hi + p];
  }

  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / Math.max(count, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-6; t += step) ticks.push(+t.toFixed(10));
    return ticks;
  }

  function label(v) {
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e4 || a < 1e-2)) return v.toExponential(1);
    return String(+v.toFixed(2));
  }

  // panels: [{ylabel, xlabel, xrange, yrange, series: [{label, x, y, color, kind: "points"|"line",
  //   marked: [bool], dash}], hlines: [{y, color, label, dash}]}] stacked top to bottom.
  // Returns the number of data points drawn.
  function draw(canvas, panels) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "12px system-ui, sans-serif";
    const left = 60, right = 12, top = 8, gap = 30, bottom = 34;
    const ph = (H - top - bottom - gap * (panels.length - 1)) / panels.length;
    let drawn = 0;
    panels.forEach((panel, k) => {
      const y0 = top + k * (ph + gap), pw = W - left - right;
      const xr = panel.xrange || finiteRange(panel.series.map((s) => s.x), 0.02);
      const ys = panel.series.map((s) => s.y).concat([(panel.hlines || []).map((h) => h.y)]);
      const yr = panel.yrange || finiteRange(ys, 0.08);
      const X = (v) => left + ((v - xr[0]) / (xr[1] - xr[0])) * pw;
      const Y = (v) => y0 + ph - ((v - yr[0]) / (yr[1] - yr[0])) * ph;
      // grid and axes
      ctx.strokeStyle = GRID; ctx.fillStyle = AXIS; ctx.lineWidth = 1; ctx.setLineDash([]);
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      for (const t of niceTicks(yr[0], yr[1], 4)) {
        ctx.beginPath(); ctx.moveTo(left, Y(t)); ctx.lineTo(left + pw, Y(t)); ctx.stroke();
        ctx.fillText(label(t), left - 6, Y(t));
      }
      ctx.textAlign = "center"; ctx.textBaseline = "top";
      for (const t of niceTicks(xr[0], xr[1], 8)) {
        ctx.beginPath(); ctx.moveTo(X(t), y0); ctx.lineTo(X(t), y0 + ph); ctx.stroke();
        if (k === panels.length - 1 || panel.xlabel) ctx.fillText(label(t), X(t), y0 + ph + 4);
      }
      ctx.strokeStyle = AXIS; ctx.strokeRect(left, y0, pw, ph);
      ctx.save(); ctx.translate(14, y0 + ph / 2); ctx.rotate(-Math.PI / 2);
      ctx.textBaseline = "middle"; ctx.fillText(panel.ylabel || "", 0, 0); ctx.restore();
      if (panel.xlabel) { ctx.textBaseline = "top"; ctx.fillText(panel.xlabel, left + pw / 2, y0 + ph + 17); }
      ctx.save();
      ctx.beginPath(); ctx.rect(left, y0, pw, ph); ctx.clip();
      for (const h of panel.hlines || []) {
        if (h.y === null || !Number.isFinite(h.y)) continue;
        ctx.strokeStyle = h.color; ctx.setLineDash(h.dash || [6, 4]);
        ctx.beginPath(); ctx.moveTo(left, Y(h.y)); ctx.lineTo(left + pw, Y(h.y)); ctx.stroke();
        ctx.setLineDash([]); ctx.fillStyle = h.color; ctx.textAlign = "left"; ctx.textBaseline = "bottom";
        if (h.label) ctx.fillText(h.label, left + 4, Y(h.y) - 2);
      }
      for (const s of panel.series) {
        ctx.strokeStyle = s.color; ctx.fillStyle = s.color; ctx.setLineDash(s.dash || []);
        if (s.kind === "line") {
          ctx.lineWidth = 2; ctx.beginPath(); let pen = false;
          s.x.forEach((x, i) => {
            const y = s.y[i];
            if (y === null || !Number.isFinite(y)) { pen = false; return; }
            if (pen) ctx.lineTo(X(x), Y(y)); else ctx.moveTo(X(x), Y(y));
            pen = true;
          });
          ctx.stroke(); ctx.lineWidth = 1; ctx.setLineDash([]);
          continue;
        }
        s.x.forEach((x, i) => {
          const y = s.y[i];
          if (y === null || x === null || !Number.isFinite(y)) return;
          drawn += 1;
          if (s.marked && s.marked[i]) {  // low-quality frame: red cross
            ctx.strokeStyle = "#ff5d5d"; ctx.lineWidth = 2; ctx.beginPath();
            ctx.moveTo(X(x) - 4, Y(y) - 4); ctx.lineTo(X(x) + 4, Y(y) + 4);
            ctx.moveTo(X(x) - 4, Y(y) + 4); ctx.lineTo(X(x) + 4, Y(y) - 4); ctx.stroke();
            ctx.strokeStyle = s.color; ctx.lineWidth = 1;
          } else {
            ctx.beginPath(); ctx.arc(X(x), Y(y), s.size || 2.5, 0, 2 * Math.PI); ctx.fill();
          }
        });
      }
      ctx.restore();
      // legend
      let lx = left + pw - 8; ctx.textAlign = "right"; ctx.textBaseline = "top";
      for (const s of panel.series.slice().reverse()) {
        if (!s.label) continue;
        ctx.fillStyle = s.color; ctx.fillText(s.label, lx, y0 + 4);
        lx -= ctx.measureText(s.label).width + 16;
      }
      ctx.fillStyle = TEXT;
    });
    return drawn;
  }

  // --- images ---------------------------------------------------------------------------

  const decoded = new WeakMap();  // encoded image object -> typed array (decode once)
  const littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  function decode(image) {
    if (decoded.has(image)) return decoded.get(image);
    const bin = atob(image.data);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    let values = bytes;
    if (image.dtype === "float32") {
      if (littleEndian) values = new Float32Array(bytes.buffer);
      else {
        const view = new DataView(bytes.buffer);
        values = new Float32Array(bytes.length / 4);
        for (let i = 0; i < values.length; i++) values[i] = view.getFloat32(4 * i, true);
      }
    }
    decoded.set(image, values);
    return values;
  }

  function contrast(values) {
    // 1st and 99th percentiles of a sample: a hot pixel does not wash out the picture
    const step = Math.max(1, Math.floor(values.length / 4096)), sample = [];
    for (let i = 0; i < values.length; i += step) if (Number.isFinite(values[i])) sample.push(values[i]);
    if (!sample.length) return [0, 1];
    sample.sort((a, b) => a - b);
    const lo = sample[Math.floor(0.01 * (sample.length - 1))], hi = sample[Math.ceil(0.99 * (sample.length - 1))];
    return hi > lo ? [lo, hi] : [lo - 0.5, lo + 0.5];
  }

  // Colour maps: grey, and viridis from its published control points (linear in between).
  const VIRIDIS = [[68, 1, 84], [72, 35, 116], [64, 67, 135], [52, 94, 141], [41, 120, 142],
    [32, 144, 140], [34, 167, 132], [68, 190, 112], [121, 209, 81], [189, 222, 38], [253, 231, 37]];
  function colour(t, cmap) {
    t = Math.max(0, Math.min(1, t));
    if (cmap !== "viridis") { const g = Math.round(255 * t); return [g, g, g]; }
    const x = t * (VIRIDIS.length - 1), i = Math.min(Math.floor(x), VIRIDIS.length - 2), f = x - i;
    return VIRIDIS[i].map((c, k) => Math.round(c + f * (VIRIDIS[i + 1][k] - c)));
  }

  // Draw an encoded image (float32 grey or uint8 RGB) at its own size; CSS scales the canvas.
  // options: {range: [lo, hi] (default: 1st-99th percentile), cmap: "gray" | "viridis"}.
  // Returns the display range used ([lo, hi]; true for RGB), or false without an image.
  function image(canvas, encoded, options) {
    if (!encoded) return false;
    const opts = options || {};
    const [rows, cols] = encoded.shape, values = decode(encoded);
    if (canvas.width !== cols) canvas.width = cols;
    if (canvas.height !== rows) canvas.height = rows;
    const ctx = canvas.getContext("2d"), out = ctx.createImageData(cols, rows), px = out.data;
    let range = true;
    if (encoded.dtype === "uint8") {
      for (let i = 0, j = 0; i < rows * cols; i++, j += 3) {
        px[4 * i] = values[j]; px[4 * i + 1] = values[j + 1]; px[4 * i + 2] = values[j + 2]; px[4 * i + 3] = 255;
      }
    } else {
      const [lo, hi] = opts.range && opts.range[1] > opts.range[0] ? opts.range : contrast(values);
      range = [lo, hi];
      let sum = 0;
      for (let i = 0; i < rows * cols; i++) {
        const v = values[i], [r, g, b] = colour(Number.isFinite(v) ? (v - lo) / (hi - lo) : 0, opts.cmap);
        px[4 * i] = r; px[4 * i + 1] = g; px[4 * i + 2] = b; px[4 * i + 3] = Number.isFinite(v) ? 255 : 0;
        sum = (sum * 31 + r + 7 * g + 13 * b) % 1000000007;
      }
      canvas.dataset.checksum = String(sum);  // what is shown (tests compare it)
    }
    ctx.putImageData(out, 0, 0);
    return range;
  }

  // A horizontal colour bar for [lo, hi] with three labelled ticks and the units.
  function colorbar(canvas, lo, hi, cmap, units) {
    const ctx = canvas.getContext("2d"), W = canvas.width, H = canvas.height, bar = H - 14;
    ctx.clearRect(0, 0, W, H);
    for (let x = 0; x < W; x++) {
      const [r, g, b] = colour(x / (W - 1), cmap);
      ctx.fillStyle = `rgb(${r},${g},${b})`; ctx.fillRect(x, 0, 1, bar);
    }
    ctx.fillStyle = TEXT; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "top";
    const ticks = [[0, "left", lo], [0.5, "center", (lo + hi) / 2], [1, "right", hi]];
    for (const [f, align, v] of ticks) {
      ctx.textAlign = align;
      ctx.fillText(`${label(v)}${f === 1 && units ? " " + units : ""}`, f * (W - 1), bar + 1);
    }
    canvas.dataset.range = `${lo},${hi}`;
  }

  return { draw, image, colorbar, finiteRange, label };
})();
