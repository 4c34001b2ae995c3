// One uPlot chart per metric: mean line with a min–max band (a bar per bucket for cumulative
// metrics), gaps as breaks, before / during / after shading, alert episodes along the top, the
// insight strip above it; and the phase statistics table.
import { el, fmtHourMinute, fmtValue, plural, unitLabel } from './format.js';
import { drawEpisodes, episodeAt } from './insights.js';

export const METRIC_ORDER = [
  'heart_rate', 'heart_rate_variability', 'blood_oxygen', 'respiratory_rate',
  'skin_temperature', 'steps', 'active_energy_burned',
];

export const COLORS = {
  heart_rate: '#e5484d',
  heart_rate_variability: '#8e4ec6',
  blood_oxygen: '#0b84d8',
  respiratory_rate: '#12a594',
  skin_temperature: '#ef6c1a',
  steps: '#2f9e5b',
  active_energy_burned: '#d99a06',
};

const PHASE_FILL = {
  before: 'rgba(100, 116, 139, 0.07)',
  during: 'rgba(229, 72, 77, 0.07)',
  after: 'rgba(59, 130, 246, 0.06)',
};

/** uPlot columns. Scalar: [x, max, min, mean]; a null row in every gap breaks line and band. */
export function chartData(metric) {
  const xs = [];
  if (metric.kind === 'cumulative') {
    return [metric.t.map((t) => t / 1000), metric.sum.slice()];
  }
  const hi = [], lo = [], mean = [];
  const breaks = (metric.gaps || []).map((g) => (g.start_ms + g.end_ms) / 2).sort((a, b) => a - b);
  let g = 0;
  const pushBreak = () => {
    xs.push(breaks[g++] / 1000); hi.push(null); lo.push(null); mean.push(null);
  };
  for (let i = 0; i < metric.t.length; i++) {
    while (g < breaks.length && breaks[g] < metric.t[i]) pushBreak();
    xs.push(metric.t[i] / 1000);
    hi.push(metric.max[i]);
    lo.push(metric.min[i]);
    mean.push(metric.mean[i]);
  }
  while (g < breaks.length) pushBreak();
  return [xs, hi, lo, mean];
}

/** A chart card for `metric`, appended to `container`:
 * {card, body, summary, strip, historyNode, history, kind, payload, u}. */
export function createChart(container, code, metric, payload) {
  const color = COLORS[code] || '#475467';
  const unit = unitLabel(metric);
  const summaryNode = el('div', { class: 'summary' });
  const body = el('div', { class: 'chart-body' });
  const strip = el('div', { class: 'insight-strip', 'data-metric': code });
  const historyNode = el('div', { class: 'history-slot' });
  const card = el('article', { class: 'chart-card', 'data-metric': code },
    el('div', { class: 'chart-head' },
      el('h2', {}, el('span', { class: 'dot', style: `background:${color}` }),
        metric.display_name, el('span', { class: 'unit', text: unit })),
      summaryNode),
    el('div', { class: 'insight-row' }, strip, historyNode),
    body);
  container.append(card);
  const chart = {
    card, body, summary: summaryNode, strip, historyNode, history: null, kind: metric.kind, payload, u: null,
  };
  const fmt = (u, v) => (v == null ? '–' : fmtValue(code, v));
  const axes = [
    {
      stroke: '#667085', grid: { stroke: '#eef0f3', width: 1 }, ticks: { stroke: '#e4e7ec', width: 1 },
      values: (u, splits) => splits.map((v) => fmtHourMinute(v * 1000)),
    },
    { stroke: '#667085', grid: { stroke: '#eef0f3', width: 1 }, ticks: { show: false }, size: 46 },
  ];
  const base = {
    width: chartWidth(body),
    height: chartHeight(),
    padding: [10, 18, 0, 2],
    legend: { show: false },
    cursor: { drag: { x: false, y: false }, points: { size: 7 } },
    axes,
    hooks: {
      drawClear: [(u) => drawPhases(u, chart.payload)],
      draw: [(u) => drawEpisodes(u, chart.payload && chart.payload.metrics[code])],
      setCursor: [(u) => showReadout(code, chart, u)],
    },
  };
  let opts;
  if (metric.kind === 'cumulative') {
    opts = {
      ...base,
      scales: { x: { time: true, range: () => xRange(chart.payload) }, y: { range: (u, min, max) => [0, niceMax(max)] } },
      series: [
        {},
        {
          label: `per ${chart.payload.resolution}`, stroke: color, fill: withAlpha(color, 0.55), width: 1,
          paths: uPlot.paths.bars({ size: [0.86, Infinity], align: 1 }), points: { show: false }, value: fmt,
        },
      ],
    };
  } else {
    opts = {
      ...base,
      scales: { x: { time: true, range: () => xRange(chart.payload) } },
      series: [
        {},
        { label: 'max', stroke: withAlpha(color, 0.35), width: 1, points: { show: false }, value: fmt },
        { label: 'min', stroke: withAlpha(color, 0.35), width: 1, points: { show: false }, value: fmt },
        { label: 'mean', stroke: color, width: 2, value: fmt, spanGaps: false },
      ],
      bands: [{ series: [1, 2], fill: withAlpha(color, 0.14) }],
    };
  }
  chart.u = new uPlot(opts, chartData(metric), body);
  // An episode bar links to its alert (controls/alerts.js shows and highlights it).
  chart.u.over.addEventListener('click', (event) => {
    const episode = episodeAt(chart.u, chart.payload && chart.payload.metrics[code], event.offsetX);
    if (episode) document.dispatchEvent(new CustomEvent('vitalcast:episode', { detail: { metric: code, ...episode } }));
  });
  return chart;
}

/** End of the time axis: the window's end, or for a live window the later of it and now, so a
 * trailing silence keeps growing between two session.updated events. */
export function axisEndMs(payload) {
  const end = payload.window.end_ms;
  return payload.live ? Math.max(end, Date.now()) : end;
}

function xRange(payload) {
  return [payload.window.start_ms / 1000, axisEndMs(payload) / 1000];
}

/** Move a live chart's time axis on to now (nothing to do for an ended session). */
export function followNow(chart) {
  if (!chart.payload || !chart.payload.live) return;
  const [min, max] = xRange(chart.payload);
  chart.u.setScale('x', { min, max });
}

/** Before / during / after shading and the session edges, drawn under the series. */
function drawPhases(u, payload) {
  if (!payload) return;
  const w = payload.window;
  const { ctx } = u;
  const { left, top, width, height } = u.bbox;
  const x = (ms) => Math.min(left + width, Math.max(left, u.valToPos(ms / 1000, 'x', true)));
  const end = axisEndMs(payload);
  const sessionEnd = w.session_end_ms == null ? end : w.session_end_ms;
  const spans = [
    ['before', w.start_ms, w.session_start_ms],
    ['during', w.session_start_ms, sessionEnd],
    ['after', sessionEnd, end],
  ];
  const ratio = window.devicePixelRatio || 1;
  ctx.save();
  ctx.font = `${Math.round(10.5 * ratio)}px system-ui, sans-serif`;
  ctx.textBaseline = 'top';
  // uPlot leaves the y axis's right alignment on the context: without this the label would
  // end at its phase's edge, over the axis's top tick label.
  ctx.textAlign = 'left';
  for (const [phase, from, to] of spans) {
    const x0 = x(from), x1 = x(to);
    if (x1 - x0 < 1) continue;
    ctx.fillStyle = PHASE_FILL[phase];
    ctx.fillRect(x0, top, x1 - x0, height);
    if (x1 - x0 > 60 * ratio) {
      ctx.fillStyle = '#98a2b3';
      const label = phase === 'during' && payload.live ? 'during · live' : phase;
      ctx.fillText(label, x0 + 6 * ratio, top + 4 * ratio);
    }
  }
  ctx.strokeStyle = 'rgba(71, 84, 103, 0.45)';
  ctx.lineWidth = ratio;
  ctx.setLineDash([4 * ratio, 3 * ratio]);
  const edges = w.session_end_ms == null ? [w.session_start_ms] : [w.session_start_ms, w.session_end_ms];
  for (const edge of edges) {
    const ex = Math.round(x(edge)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(ex, top);
    ctx.lineTo(ex, top + height);
    ctx.stroke();
  }
  ctx.restore();
}

/** While the cursor is over a chart its head shows that bucket; otherwise the summary. */
function showReadout(code, chart, u) {
  const i = u.cursor.idx;
  const metric = chart.payload && chart.payload.metrics[code];
  if (!metric) return;
  if (i == null) {
    chart.summary.replaceChildren(...summary(code, metric));
    return;
  }
  const at = fmtHourMinute(u.data[0][i] * 1000);
  const value = u.data[u.data.length - 1][i];
  if (value == null) {
    chart.summary.replaceChildren(`${at} · no samples`);
  } else if (chart.kind === 'cumulative') {
    chart.summary.replaceChildren(el('strong', { text: fmtValue(code, value) }), ` at ${at}`);
  } else {
    chart.summary.replaceChildren(el('strong', { text: fmtValue(code, value) }),
      ` at ${at} · ${fmtValue(code, u.data[2][i])}–${fmtValue(code, u.data[1][i])}`);
  }
}

export function summary(code, metric) {
  const during = metric.phases && metric.phases.during;
  if (!during || !during.count) return [el('span', { text: plural(metric.stats.count, 'sample') })];
  if (metric.kind === 'cumulative') {
    return [el('strong', { text: fmtValue(code, during.sum) }), ' during'];
  }
  return [
    el('strong', { text: fmtValue(code, during.mean) }), ' avg during · ',
    `${fmtValue(code, during.min)}–${fmtValue(code, during.max)}`,
  ];
}

export function renderPhaseTable(table, payload, codes) {
  const phases = ['before', 'during', 'after'];
  const head = el('thead', {}, el('tr', {}, el('th', { text: 'Metric' }),
    ...phases.map((p) => el('th', { text: p }))));
  const rows = codes.map((code) => {
    const metric = payload.metrics[code];
    const unit = unitLabel(metric);
    return el('tr', { 'data-metric': code },
      el('th', {}, metric.display_name, el('div', { class: 'range', text: unit })),
      ...phases.map((phase) => phaseCell(code, metric, metric.phases && metric.phases[phase])));
  });
  table.replaceChildren(head, el('tbody', {}, ...rows));
}

function phaseCell(code, metric, stats) {
  if (!stats || !stats.count) return el('td', { class: 'range', text: '—' });
  if (metric.kind === 'cumulative') {
    // Totals have no gaps, so no coverage.
    return el('td', {}, el('span', { class: 'value', text: fmtValue(code, stats.sum) }),
      el('div', { class: 'range', text: plural(stats.count, 'sample') }));
  }
  const coverage = Math.round((stats.coverage || 0) * 100);
  const bar = el('span', { class: 'coverage', title: `${coverage}% of this phase's time lies outside gaps` },
    el('span', { style: `width:${coverage}%` }));
  return el('td', {},
    el('span', { class: 'value', text: fmtValue(code, stats.mean) }),
    el('div', { class: 'range', text: `${fmtValue(code, stats.min)}–${fmtValue(code, stats.max)} · ${coverage}% covered` }),
    bar);
}

function withAlpha(hex, alpha) {
  const n = parseInt(hex.slice(1), 16);
  return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function niceMax(max) {
  if (!(max > 0)) return 1;
  const step = 10 ** Math.floor(Math.log10(max));
  return Math.ceil((max * 1.1) / step) * step;
}

export function chartWidth(body) {
  return Math.max(240, Math.floor(body.clientWidth || body.parentElement.clientWidth - 24));
}

export function chartHeight() {
  return window.matchMedia('(max-width: 760px)').matches ? 170 : 200;
}
