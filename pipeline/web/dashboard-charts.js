// speechpipe dashboard: the charts, drawn with uPlot (vendored under /vendor/uplot, MIT licence).
// Time series come from /dashboard/history once, then one point per snapshot; the deployment's
// changes are drawn over every time chart as vertical marks. Exposes window.Charts.
"use strict";

(() => {
  const PALETTE = ["#2f6fde", "#d9480f", "#2b8a3e", "#9c36b5", "#e67700", "#0b7285", "#c2255c", "#5f3dc4"];
  const MARK_COLOURS = { rollback: "#c0392b", revert: "#c0392b", promote: "#1f8a4c", advance: "#2f6fde", switch: "#7048e8", set_weight: "#b7791f", start: "#868e96" };
  const MARKED = new Set(["start", "advance", "rollback", "promote", "revert", "switch", "set_weight"]);

  const colours = new Map();
  function colourOf(name) {
    if (!colours.has(name)) colours.set(name, PALETTE[colours.size % PALETTE.length]);
    return colours.get(name);
  }

  const num = (v) => (v === null || v === undefined || Number.isNaN(v) ? null : v);
  const fmtSecs = (v) => (num(v) === null ? "–" : `${v.toFixed(2)} s`);
  const fmtPct = (v) => (num(v) === null ? "–" : `${v.toFixed(1)} %`);
  const fmtCount = (v) => (num(v) === null ? "–" : (Number.isInteger(v) ? String(v) : v.toFixed(1)));
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  // -- the time series, as columns ----------------------------------------------------------------

  const store = { columns: { t: [] }, marks: [], range: 900 };

  function setHistory(columns) {
    store.columns = columns && columns.t ? columns : { t: [] };
  }

  function addPoint(point) {
    if (!point) return false;
    const cols = store.columns;
    const n = cols.t.length;
    if (n && point.t <= cols.t[n - 1]) return false;
    for (const key of Object.keys(point)) if (!(key in cols)) cols[key] = new Array(n).fill(null);
    for (const key of Object.keys(cols)) cols[key].push(key in point ? point[key] : null);
    return true;
  }

  function setMarks(history) {
    store.marks = (history || []).filter((c) => MARKED.has(c.action)).map((c) => ({ at: c.at, action: c.action, weights: c.weights }));
  }

  // the variants that have any point in the series of ``prefix``
  function variantsOf(prefix) {
    return Object.keys(store.columns).filter((k) => k.startsWith(`${prefix}.`)).map((k) => k.slice(prefix.length + 1)).sort();
  }

  function window_() {
    const t = store.columns.t;
    const end = t.length ? t[t.length - 1] : Date.now() / 1000;
    const from = end - store.range;
    let i = 0;
    while (i < t.length && t[i] < from) i++;
    return { i, from, end };
  }

  // -- uPlot glue ---------------------------------------------------------------------------------

  // Draws the deployment's changes as labelled vertical lines.
  function marksPlugin() {
    return {
      hooks: {
        draw: [(u) => {
          const { ctx } = u;
          const top = u.bbox.top, height = u.bbox.height;
          ctx.save();
          ctx.font = `${Math.round(10 * devicePixelRatio)}px system-ui, sans-serif`;
          ctx.textBaseline = "top";
          for (const m of store.marks) {
            if (m.at < u.scales.x.min || m.at > u.scales.x.max) continue;
            const x = Math.round(u.valToPos(m.at, "x", true));
            ctx.strokeStyle = MARK_COLOURS[m.action] || "#868e96";
            ctx.fillStyle = ctx.strokeStyle;
            ctx.lineWidth = 1.5 * devicePixelRatio;
            ctx.setLineDash([4 * devicePixelRatio, 3 * devicePixelRatio]);
            ctx.beginPath();
            ctx.moveTo(x, top);
            ctx.lineTo(x, top + height);
            ctx.stroke();
            ctx.fillText(m.action.replace("_", " "), x + 3 * devicePixelRatio, top + 2 * devicePixelRatio);
          }
          ctx.restore();
        }],
      },
    };
  }

  function widthOf(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width) - 4);
  }

  // A time chart in ``figure`` (its .plot div): ``spec()`` gives {key, series: [{label, key, ...}], yLabel, fmt}.
  class TimeChart {
    constructor(figure, spec) {
      this.figure = figure;
      this.el = figure.querySelector(".plot");
      this.spec = spec;
      this.plot = null;
      this.shape = "";
    }

    render() {
      const s = this.spec();
      const { i } = window_();
      const cols = store.columns;
      const data = [cols.t.slice(i)];
      for (const ser of s.series) data.push((cols[ser.key] || []).slice(i).map((v) => (num(v) === null ? null : v * (ser.scale || 1))));
      const shape = JSON.stringify(s.series.map((x) => x.key));
      if (!this.plot || shape !== this.shape) {
        if (this.plot) this.plot.destroy();
        this.shape = shape;
        this.plot = new uPlot(this.options(s), data, this.el);
      } else {
        this.plot.setData(data);
      }
      this.figure.dataset.points = String(data[0].length);
      this.figure.dataset.series = s.series.map((x) => x.label).join("|");
    }

    options(s) {
      return {
        width: widthOf(this.figure),
        height: 200,
        plugins: [marksPlugin()],
        cursor: { drag: { x: true, y: false } },
        legend: { live: true },
        scales: { x: { time: true }, y: { range: (u, min, max) => [Math.min(0, min ?? 0), Math.max(max ?? 1, s.yMin || 0) * 1.08 || 1] } },
        axes: [
          { label: "time", labelSize: 18 },
          { label: s.yLabel, labelSize: 18, size: 56, values: (u, ticks) => ticks.map((v) => s.tick(v)) },
        ],
        series: [
          { label: "time", value: (u, v) => (v === null ? "–" : clock(v)) },
          ...s.series.map((x) => ({
            label: x.label,
            stroke: x.colour,
            width: x.width || 1.5,
            dash: x.dash,
            spanGaps: x.spanGaps !== false,
            paths: x.stepped ? uPlot.paths.stepped({ align: 1 }) : x.points ? () => null : undefined,
            points: x.points ? { show: true, size: 6, fill: x.colour } : { show: false },
            value: (u, v) => s.fmt(v),
          })),
        ],
      };
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: widthOf(this.figure), height: 200 });
    }
  }

  const specs = {
    latency: () => ({
      yLabel: "seconds", fmt: fmtSecs, tick: (v) => `${v.toFixed(1)} s`, yMin: 1,
      series: variantsOf("latency_p95").flatMap((name) => [
        { label: `${name} p50`, key: `latency_p50.${name}`, colour: colourOf(name), width: 1 },
        { label: `${name} p95`, key: `latency_p95.${name}`, colour: colourOf(name), width: 2.5 },
      ]),
    }),
    wer: () => ({
      yLabel: "WER %", fmt: fmtPct, tick: (v) => `${v.toFixed(0)} %`, yMin: 10,
      series: [...new Set([...variantsOf("estimated_wer"), ...variantsOf("human_wer")])].sort().flatMap((name) => [
        { label: `${name} estimated`, key: `estimated_wer.${name}`, colour: colourOf(name), width: 2, scale: 100 },
        { label: `${name} from people`, key: `human_wer.${name}`, colour: colourOf(name), points: true, scale: 100, spanGaps: false },
      ]),
    }),
    streams: () => ({
      yLabel: "streams", fmt: fmtCount, tick: (v) => fmtCount(v), yMin: 2,
      series: [
        { label: "open", key: "streams_open", colour: "#2f6fde", width: 2 },
        { label: "accepted in the last minute", key: "accepted_last_min", colour: "#2b8a3e", width: 1.5 },
        { label: "refused in the last minute", key: "refused_last_min", colour: "#c0392b", width: 2, dash: [6, 3] },
      ],
    }),
    weights: () => ({
      yLabel: "share %", fmt: fmtPct, tick: (v) => `${v.toFixed(0)} %`, yMin: 100,
      series: variantsOf("weight").map((name) => ({ label: name, key: `weight.${name}`, colour: colourOf(name), width: 2, stepped: true, scale: 100 })),
    }),
  };

  const charts = {};
  function renderAll() {
    for (const [name, spec] of Object.entries(specs)) {
      const figure = document.getElementById(`chart-${name}`);
      if (!figure) continue;
      if (!charts[name]) charts[name] = new TimeChart(figure, spec);
      charts[name].render();
    }
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => Object.values(charts).forEach((c) => c.resize()), 150);
  });

  // -- small charts: a drift histogram, a review threshold curve ------------------------------------

  // Baseline and window shares of a quantity on shared bins, as bars with axes.
  const compact = (v) => {
    const a = Math.abs(v);
    if (a >= 1000) return `${(v / 1000).toFixed(a >= 10000 ? 0 : 1)}k`;
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    return v.toPrecision(2);
  };

  function histogram(el, h, unit, old) {
    const n = h.labels.length;
    // bin centres from the edges where the server gives them (quantities), compactly written
    const names = h.edges ? h.labels.map((_, i) => compact((h.edges[i] + h.edges[i + 1]) / 2)) : h.labels;
    const x = h.labels.map((_, i) => i);
    const data = [x, h.baseline.map((v) => 100 * v), h.current.map((v) => 100 * v)];
    const key = JSON.stringify(data);
    if (old && old.key === key) return old;
    if (old) old.plot.destroy();
    const bars = (align) => uPlot.paths.bars({ size: [0.42, 40], align });
    const plot = new uPlot({
      width: Math.max(200, el.parentElement.clientWidth - 14),
      height: 130,
      legend: { show: false },
      cursor: { show: true, points: { show: false } },
      scales: { x: { time: false, range: [-0.6, n - 0.4] }, y: { range: (u, min, max) => [0, Math.max(max, 1) * 1.1] } },
      axes: [
        { label: unit, labelSize: 14, size: 30, font: "10px system-ui", labelFont: "10px system-ui",
          splits: () => x.filter((i) => n <= 6 || i % Math.ceil(n / 4) === 0), values: (u, ticks) => ticks.map((i) => names[i] ?? "") },
        { label: "share %", labelSize: 14, size: 36, font: "10px system-ui", labelFont: "10px system-ui", values: (u, ticks) => ticks.map((v) => `${v.toFixed(0)}`) },
      ],
      series: [
        {},
        { label: "baseline", fill: "#9aa5b8", stroke: "#9aa5b8", paths: bars(-1), points: { show: false } },
        { label: "recent", fill: "#2f6fde", stroke: "#2f6fde", paths: bars(1), points: { show: false } },
      ],
    }, data, el);
    return { key, plot };
  }

  // The share of segments sent to review (x) against the share of word errors caught (y), %.
  function curve(el, points, at, old) {
    const x = points.map((p) => 100 * p.sent);
    const data = [x, points.map((p) => 100 * p.caught), points.map((p) => (p === at ? 100 * p.caught : null)), x.slice()];
    const key = JSON.stringify(data);
    if (old && old.key === key) return old;
    if (old) old.plot.destroy();
    const plot = new uPlot({
      width: Math.max(240, Math.floor(el.getBoundingClientRect().width) - 2),
      height: 220,
      legend: { show: true, live: true },
      scales: { x: { time: false, range: [0, 100] }, y: { range: [0, 100] } },
      axes: [
        { label: "segments sent to review (%)", labelSize: 16 },
        { label: "AI word errors caught (%)", labelSize: 16, size: 44 },
      ],
      series: [
        { label: "sent", value: (u, v) => fmtPct(v) },
        { label: "caught", stroke: "#2f6fde", width: 1.5, value: (u, v) => fmtPct(v) },
        { label: "review_below", stroke: "#c0392b", paths: () => null, points: { show: true, size: 9, fill: "#c0392b" }, value: (u, v) => fmtPct(v) },
        { label: "chance", stroke: "#adb5bd", dash: [4, 4], width: 1, value: (u, v) => fmtPct(v) },
      ],
    }, data, el);
    return { key, plot };
  }

  window.Charts = {
    setHistory, addPoint, setMarks, renderAll, histogram, curve, colourOf,
    setRange(seconds) { store.range = seconds; for (const c of Object.values(charts)) if (c.plot) c.plot.destroy(), (c.plot = null); renderAll(); },
    get points() { return store.columns.t.length; },
  };
})();
