// Insights on a metric card: the strip (baseline → during, Δ, peak, recovery, alerts; totals and
// rates for cumulative metrics), the alert episodes drawn on the chart, and a small chart of the
// last completed sessions' Δ (or during total) with this session highlighted.
//
// Every number in the strip carries its API value in data-value (the browser test compares them
// with GET …/telemetry); the text is that value rounded for reading.
import { el, fmtMinutes, fmtValue, unitLabel } from './format.js';

const EPISODE_COLORS = { critical: '#d92d20', elevated: '#f79009', low: '#f79009' };
const HISTORY_OTHER = '#c0c6d0';

const BASELINE_REASONS = {
  no_before_data: 'no samples before the session',
  low_coverage: 'less than half of the time before is covered',
};
const RECOVERY_REASONS = {
  live: 'recovery: once the session ends',
  no_baseline: 'recovery: needs a baseline',
  not_within_window: 'not back to baseline within the window',
};

function number(field, value, text) {
  return el('span', { class: 'num', 'data-field': field, 'data-value': JSON.stringify(value) }, text);
}

function signed(code, value) {
  const sign = value > 0 ? '+' : value < 0 ? '−' : '±';
  return `${sign}${fmtValue(code, Math.abs(value))}`;
}

function item(...children) {
  return el('span', { class: 'item' }, ...children);
}

/** The strip of one metric; replaces `node`'s content. */
export function renderStrip(node, code, metric) {
  const insights = metric.insights;
  if (!insights) {
    node.replaceChildren();
    return;
  }
  const unit = unitLabel(metric);
  if (metric.kind === 'cumulative') {
    const rates = insights.rate_per_min;
    const rate = (phase) => (rates[phase] == null ? '—' : fmtValue(code, rates[phase]));
    node.replaceChildren(
      item(number('during_total', insights.during_total, fmtValue(code, insights.during_total)),
        ` ${unit} during`),
      item(number('rate_per_min.during', rates.during, rate('during')), `/min during · `,
        number('rate_per_min.before', rates.before, rate('before')), '/min before · ',
        number('rate_per_min.after', rates.after, rate('after')), '/min after'),
    );
    return;
  }
  const parts = [];
  if (insights.baseline == null) {
    parts.push(item(number('baseline', null, 'no baseline'),
      el('span', { class: 'why', text: ` (${BASELINE_REASONS[insights.baseline_reason] || insights.baseline_reason})` })));
  } else {
    parts.push(item(number('baseline', insights.baseline, fmtValue(code, insights.baseline)), ' → ',
      number('during_mean', insights.during_mean,
        insights.during_mean == null ? '—' : fmtValue(code, insights.during_mean)),
      ` ${unit}`));
  }
  if (insights.delta != null) {
    parts.push(item(el('span', { class: 'label', text: 'Δ ' }),
      number('delta', insights.delta, signed(code, insights.delta)),
      ' (', number('delta_pct', insights.delta_pct, `${signed('pct', insights.delta_pct)} %`), ')'));
  }
  if (insights.peak) {
    parts.push(item(el('span', { class: 'label', text: 'peak ' }),
      number('peak.value', insights.peak.value, fmtValue(code, insights.peak.value)),
      ' at +', number('peak.after_start_ms', insights.peak.after_start_ms, fmtMinutes(insights.peak.after_start_ms))));
  }
  if (insights.recovery_ms != null) {
    parts.push(item(el('span', { class: 'label', text: 'back to baseline ' }),
      number('recovery_ms', insights.recovery_ms, fmtMinutes(insights.recovery_ms)), ' after the end'));
  } else {
    parts.push(item(number('recovery_ms', null, RECOVERY_REASONS[insights.recovery_reason] || insights.recovery_reason)));
  }
  const episodes = insights.episodes || [];
  if (episodes.length) {
    const critical = episodes.filter((e) => e.level === 'critical').length;
    parts.push(item(el('span', { class: 'alert-dot', 'data-level': critical ? 'critical' : 'elevated' }),
      number('episodes', episodes.length, `${episodes.length} alert${episodes.length === 1 ? '' : 's'}`),
      critical ? ` (${critical} critical)` : ''));
  }
  node.replaceChildren(...parts);
}

/** Alert episodes as bars along the top of the plot (uPlot `draw` hook). */
export function drawEpisodes(u, metric) {
  const episodes = metric && metric.insights && metric.insights.episodes;
  if (!episodes || !episodes.length) return;
  const { ctx } = u;
  const { left, top, width, height } = u.bbox;
  const ratio = window.devicePixelRatio || 1;
  const x = (ms) => Math.min(left + width, Math.max(left, u.valToPos(ms / 1000, 'x', true)));
  ctx.save();
  // milder levels first, so a critical stretch is drawn over the episode it lies in
  const ordered = [...episodes].sort((a, b) => (a.level === 'critical') - (b.level === 'critical'));
  for (const episode of ordered) {
    const x0 = Math.round(x(episode.start_ms));
    const x1 = Math.max(x0 + 2, Math.round(x(episode.end_ms)));
    ctx.fillStyle = EPISODE_COLORS[episode.level] || EPISODE_COLORS.elevated;
    ctx.globalAlpha = 1;
    ctx.fillRect(x0, top, x1 - x0, 4 * ratio);
    ctx.globalAlpha = 0.08;
    ctx.fillRect(x0, top, x1 - x0, height);
  }
  ctx.restore();
}

/** The episode drawn under x (CSS pixels in the plot area), the strictest one there; null if none. */
export function episodeAt(u, metric, offsetX) {
  const episodes = metric && metric.insights && metric.insights.episodes;
  if (!episodes || !episodes.length) return null;
  const ms = u.posToVal(offsetX, 'x') * 1000;
  const hits = episodes.filter((e) => e.start_ms <= ms && ms < e.end_ms);
  return hits.find((e) => e.level === 'critical') || hits[0] || null;
}

function ordinal(n) {
  const r = Math.round(n);
  const tens = r % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : { 1: 'st', 2: 'nd', 3: 'rd' }[r % 10] || 'th';
  return `${r}${suffix}`;
}

/** The figure sessions are compared by, in a metric's insights (null when unknown). */
export function comparedValue(answer, insights) {
  return insights ? insights[answer.compared] : null;
}

/** The small chart of the last completed sessions (oldest left), this session highlighted; a
 * session not among them (live, or older) is added on the right with its figure so far.
 * Sets holder.history = {u, answer, current} (current: its bar's index). */
export function renderHistory(holder, code, answer, session, color) {
  const lines = [...answer.sessions].reverse();
  let index = lines.findIndex((line) => line.session_id === session.id);
  const label = answer.compared === 'delta' ? 'Δ' : 'total';
  const others = lines.filter((_line, i) => i !== index).map((line) => line.value).filter((v) => v != null);
  if (index < 0 && session.value != null) {
    lines.push({ session_id: session.id, value: session.value });
    index = lines.length - 1;
  }
  const caption = el('div', { class: 'history-caption' });
  const node = el('div', { class: 'history', 'data-metric': code });
  if (holder.history) holder.history.u.destroy();
  holder.history = null;
  holder.historyNode.replaceChildren(node);
  if (!lines.some((line) => line.value != null)) {
    caption.textContent = answer.compared === 'delta'
      ? `no Δ in your last ${answer.sessions.length} sessions (each needs a baseline)`
      : `no total in your last ${answer.sessions.length} sessions`;
    node.append(caption);
    return;
  }
  const place = answer.place;
  if (index >= 0 && place && place.session_id === session.id && place.percentile != null) {
    caption.append(`${label} vs your last ${place.compared_with}: usual `,
      number('history.median', place.median, fmtValue(code, place.median)),
      ', this one at the ', number('history.percentile', place.percentile, ordinal(place.percentile)),
      ' percentile');
  } else if (index >= 0 && others.length) {
    const sorted = [...others].sort((a, b) => a - b);
    const mid = Math.floor(sorted.length / 2);
    const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    caption.append(`${label} ${session.live ? 'so far ' : ''}vs your last ${others.length}: usual `,
      number('history.median', median, fmtValue(code, median)));
  } else {
    caption.append(`${label} in your last ${answer.sessions.length} sessions`);
  }
  const plot = el('div', { class: 'history-plot' });
  node.append(plot, caption);
  const data = [
    lines.map((_line, i) => i),
    lines.map((line, i) => (i === index ? null : line.value)),
    lines.map((line, i) => (i === index ? line.value : null)),
  ];
  const bars = uPlot.paths.bars({ size: [0.7, 14], align: 0 });
  const opts = {
    width: 170,
    height: 46,
    padding: [4, 2, 0, 2],
    legend: { show: false },
    cursor: { show: false },
    axes: [{ show: false }, { show: false }],
    scales: {
      x: { time: false, range: () => [-0.5, lines.length - 0.5] },
      y: { range: (u, min, max) => [Math.min(0, min == null ? 0 : min), Math.max(0, max == null ? 0 : max) || 1] },
    },
    series: [
      {},
      { stroke: HISTORY_OTHER, fill: HISTORY_OTHER, paths: bars, points: { show: false } },
      { stroke: color, fill: color, paths: bars, points: { show: false } },
    ],
  };
  holder.history = { u: new uPlot(opts, data, plot), answer, current: index };
}
