// The open session: its head, one chart per metric with its comparison, the phase table, the
// freshness badge, and the controls of SESSION_CONTROLS (app.js). Made when a session opens and
// closed when it closes, so nothing of one session outlives it.
//
// What a control may use (and nothing else): `id`, `session` (its list row, null until known),
// `payload` (the telemetry drawn, null until the first), `windowMinutes`, `setNotice(text)`,
// `on(event, handler)` (Socket.IO events of this session only; removed on close) and
// `onClose(fn)`.
import {
  COLORS, METRIC_ORDER, chartData, chartHeight, chartWidth, createChart, followNow, renderPhaseTable, summary,
} from './charts.js';
import { fmtClock, fmtDay, sessionSpan } from './format.js';
import { Histories } from './histories.js';
import { comparedValue, renderHistory, renderStrip } from './insights.js';
import { TelemetryLoader } from './loader.js';

const $ = (id) => document.getElementById(id);
const NOT_FOUND = 'This session does not exist or is not yours.';

/** Where a control's node goes: the head's row of controls, above the charts, after them. */
const SLOTS = { head: 'session-controls', top: 'session-top', bottom: 'session-bottom' };

export class SessionView {
  /**
   * session: its list row if known. live: the Live connection (for on() and the badge).
   * controls: functions view → {node, slot?: 'head' | 'top' | 'bottom', update?(session),
   * close?()}. onLiveChanged(): the payload says live where the row does not (or back).
   * compare: draw the comparison with the owner's last sessions (a share reads one session
   * only, so a shared page asks for none: GET /insights would answer 403 SHARE_SCOPE).
   */
  constructor(id, { session, windowMinutes, live, controls, onLiveChanged, compare = true }) {
    this.id = id;
    this.session = session;
    this.windowMinutes = windowMinutes;
    this.live = live;
    this.onLiveChanged = onLiveChanged;
    this.compare = compare;
    this.closed = false;
    // metric code → {u: uPlot, card, body, summary, strip, history, payload, kind}
    this.charts = new Map();
    this.cleanups = [];
    this.loader = new TelemetryLoader(id, windowMinutes, {
      onPayload: (payload) => this.render(payload),
      onNotice: (text) => this.setNotice(text),
      onSettled: () => this.paintFreshness(),
    });
    this.histories = new Histories(windowMinutes, (code) => this.drawHistory(code));

    document.body.classList.add('has-session');
    $('placeholder').hidden = true;
    $('session-view').hidden = false;
    $('charts').replaceChildren();
    $('phases').hidden = true;
    this.setNotice(null);
    this.renderHead();
    this.paintFreshness();
    this.controls = controls.map((make) => make(this));
    for (const control of this.controls) {
      $(SLOTS[control.slot || 'head']).append(control.node);
    }
  }

  get payload() {
    return this.loader.payload;
  }

  /** Ask for the telemetry now (a hint arrived, or the page became visible). */
  refresh() {
    this.loader.load();
  }

  /** The Socket.IO `event` of this session, until it closes. */
  on(event, handler) {
    this.cleanups.push(this.live.on(event, (payload) => {
      if (payload && payload.session_id === this.id) handler(payload);
    }));
  }

  onClose(fn) {
    this.cleanups.push(fn);
  }

  close() {
    this.closed = true;
    this.loader.close();
    this.histories.close();
    for (const fn of this.cleanups.splice(0)) fn();
    for (const control of this.controls) {
      if (control.close) control.close();
      control.node.remove();
    }
    for (const chart of this.charts.values()) destroyChart(chart);
    this.charts.clear();
    document.body.classList.remove('has-session');
    $('session-view').hidden = true;
  }

  /** A newer row of this session (list reload, status event, or fetched alone). */
  setSession(session) {
    if (!session || this.closed) return;
    this.session = session;
    this.renderHead();
    for (const control of this.controls) if (control.update) control.update(session);
  }

  /** The session changed state (ended, cancelled): its payload and comparisons change too. */
  statusChanged() {
    this.histories.reset();
    this.refresh();
  }

  setWindow(minutes) {
    this.windowMinutes = minutes;
    this.loader.setWindow(minutes);
    this.histories.reset(minutes);
    this.paintFreshness();
    this.refresh();
  }

  setNotice(text) {
    $('notice').textContent = text || '';
    $('notice').hidden = !text;
  }

  // ---- Live's subscriber interface ----

  watermark() {
    return this.payload ? this.payload.source_watermark : null;
  }

  onSubscribed(ack) {
    const shown = this.payload ? this.payload.source_watermark : -1;
    if (ack.session_watermark > shown || ack.state !== this.loader.state) this.refresh();
  }

  onNotFound() {
    this.setNotice(NOT_FOUND);
  }

  // ---- drawing ----

  renderHead() {
    const s = this.session;
    $('session-title').textContent = s ? fmtDay(s.start_ms) : 'Session';
    $('session-meta').textContent = s ? `${sessionSpan(s)} · ${s.live ? 'live' : s.status}` : '';
    $('session-notes').textContent = (s && s.notes) || '';
    $('session-notes').hidden = !(s && s.notes);
  }

  /** A live session's "so far" grows. */
  tick() {
    if (this.session && this.session.live) this.renderHead();
  }

  render(payload) {
    if (this.session && payload.live !== this.session.live) this.onLiveChanged();
    const codes = METRIC_ORDER.filter((code) => payload.metrics[code]);
    for (const [code, chart] of this.charts) {
      if (!codes.includes(code)) {
        destroyChart(chart);
        chart.card.remove();
        this.charts.delete(code);
      }
    }
    const container = $('charts');
    codes.forEach((code, index) => {
      const metric = payload.metrics[code];
      let chart = this.charts.get(code);
      if (!chart) {
        chart = createChart(container, code, metric, payload);
        this.charts.set(code, chart);
      }
      if (container.children[index] !== chart.card) container.insertBefore(chart.card, container.children[index] || null);
      chart.payload = payload;
      chart.u.setData(chartData(metric), true);
      chart.summary.replaceChildren(...summary(code, metric));
      renderStrip(chart.strip, code, metric);
    });
    renderPhaseTable($('phase-table'), payload, codes);
    $('phases').hidden = codes.length === 0;
    this.renderHead();
    for (const code of this.compare ? codes : []) {
      if (this.histories.answer(code)) this.drawHistory(code);
      else this.histories.want(code);
    }
  }

  /** The small chart of `code` from the last answer, with this session's current figure. */
  drawHistory(code) {
    const answer = this.histories.answer(code);
    const chart = this.charts.get(code);
    if (!answer || !chart) return;
    const metric = this.payload && this.payload.metrics[code];
    const session = {
      id: this.id,
      live: Boolean(this.payload && this.payload.live),
      value: comparedValue(answer, metric && metric.insights),
    };
    renderHistory(chart, code, answer, session, COLORS[code] || '#475467');
  }

  /** A live chart's axis follows the clock, so silence since the last payload shows as it grows. */
  followNow() {
    for (const chart of this.charts.values()) followNow(chart);
  }

  resize() {
    for (const chart of this.charts.values()) {
      chart.u.setSize({ width: chartWidth(chart.body), height: chartHeight() });
    }
  }

  paintFreshness() {
    if (this.closed) return;
    const badge = $('freshness');
    const { payload } = this;
    const state = this.loader.state;
    const live = this.session ? this.session.live : payload && payload.live;
    const asOf = payload ? fmtClock(payload.computed_at_ms) : null;
    let kind, text;
    if (this.live.shown === 'reconnecting' && live) {
      kind = 'reconnecting'; text = asOf ? `reconnecting… · as of ${asOf}` : 'reconnecting…';
    } else if (state === 'computing' || (!payload && state !== 'no_data')) {
      kind = 'computing'; text = 'computing…';
    } else if (state === 'stale') {
      kind = 'stale'; text = asOf ? `stale · as of ${asOf}` : 'stale';
    } else if (state === 'failed') {
      kind = 'failed'; text = asOf ? `delayed · as of ${asOf}` : 'delayed';
    } else if (live) {
      kind = 'live'; text = asOf ? `live · ${asOf}` : 'live';
    } else {
      kind = 'asof'; text = asOf ? `as of ${asOf}` : 'up to date';
    }
    badge.dataset.kind = kind;
    badge.textContent = text;
  }
}

function destroyChart(chart) {
  chart.u.destroy();
  if (chart.history) chart.history.u.destroy();
}
