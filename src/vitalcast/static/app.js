// vitalcast dashboard: sessions list, one uPlot chart per metric, phase statistics, live redraw.
//
// The bearer token comes from the URL fragment (#token=…, never sent to a server), is kept in
// sessionStorage (this tab only) and travels only in the Authorization header and in the
// Socket.IO auth packet. Socket.IO events are hints: on session.updated the page re-GETs the
// telemetry with If-None-Match, so an unchanged payload costs a 304.
(() => {
  'use strict';

  const TOKEN_KEY = 'vitalcast.token';
  const AUTH_CODES = new Set(['UNAUTHENTICATED', 'TOKEN_INVALID', 'TOKEN_EXPIRED']);
  const METRIC_ORDER = [
    'heart_rate', 'heart_rate_variability', 'blood_oxygen', 'respiratory_rate',
    'skin_temperature', 'steps', 'active_energy_burned',
  ];
  const COLORS = {
    heart_rate: '#e5484d',
    heart_rate_variability: '#8e4ec6',
    blood_oxygen: '#0b84d8',
    respiratory_rate: '#12a594',
    skin_temperature: '#ef6c1a',
    steps: '#2f9e5b',
    active_energy_burned: '#d99a06',
  };
  const DECIMALS = { heart_rate: 0, blood_oxygen: 1, skin_temperature: 2, steps: 0 };
  const UNITS = { degC: '°C', count: 'steps', 'breaths/min': 'br/min' };
  const PHASE_FILL = {
    before: 'rgba(100, 116, 139, 0.07)',
    during: 'rgba(229, 72, 77, 0.07)',
    after: 'rgba(59, 130, 246, 0.06)',
  };
  const RECONNECT_GRACE_MS = 2000;
  const POLL_WHILE_OFFLINE_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'style') node.style.cssText = value; // CSSOM: allowed by the page's CSP
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  };

  const state = {
    token: null,
    sessions: new Map(),
    order: [],
    nextCursor: null,
    current: null,
    windowMinutes: 60,
    socket: null,
    connection: 'connecting',
    connectionShown: 'connecting',
    reconnectAttempt: 0,
    renders: 0,
    updatesReceived: 0,
  };
  // Metric code → {u: uPlot, card, kind}. Exposed (with state) for devtools and the browser test.
  const charts = new Map();
  window.vitalcast = { state, charts };

  class AuthError extends Error {}

  // ---- token and routing ---------------------------------------------------------------

  function hashParams() {
    return new URLSearchParams(location.hash.replace(/^#/, ''));
  }

  function readToken() {
    const params = hashParams();
    const fromUrl = params.get('token');
    if (fromUrl) {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
      params.delete('token');
      const rest = params.toString();
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    }
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function route() {
    const id = hashParams().get('session');
    if (id) openSession(id);
    else closeSession();
  }

  function signOut(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    if (state.socket) {
      state.socket.disconnect();
      state.socket = null;
    }
    closeSession();
    document.body.classList.add('signed-out');
    $('signin').hidden = false;
    $('placeholder').hidden = true;
    $('signin-reason').textContent = reason || '';
    state.connection = 'signed-out';
    paintConnection();
  }

  // ---- HTTP ----------------------------------------------------------------------------

  async function api(path, headers = {}) {
    const response = await fetch(path, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: 'application/json', ...headers },
      cache: 'no-store',
      credentials: 'omit',
    });
    if (response.status === 401) {
      signOut('The server refused the token: it is missing, invalid or expired.');
      throw new AuthError('unauthenticated');
    }
    return response;
  }

  function retryAfterMs(response, body) {
    const header = Number(response.headers.get('Retry-After'));
    const seconds = Number.isFinite(header) && header > 0 ? header : body && body.retry_after_seconds;
    return Math.min(60, Math.max(1, Number(seconds) || 2)) * 1000;
  }

  // ---- sessions list -------------------------------------------------------------------

  async function loadSessions({ append = false } = {}) {
    const query = new URLSearchParams({ limit: '50' });
    if (append && state.nextCursor) query.set('cursor', state.nextCursor);
    const response = await api(`/api/v1/sessions?${query}`);
    if (!response.ok) throw new Error(`sessions: HTTP ${response.status}`);
    const page = await response.json();
    if (!append) {
      state.sessions.clear();
      state.order = [];
    }
    for (const session of page.items) {
      if (!state.sessions.has(session.id)) state.order.push(session.id);
      state.sessions.set(session.id, session);
    }
    state.nextCursor = page.next_cursor;
    renderSessionList();
    const cur = state.current;
    if (cur && state.sessions.has(cur.id)) {
      cur.session = state.sessions.get(cur.id);
      renderSessionHead();
    }
  }

  let listRefresh = null;
  function refreshSessionsSoon() {
    clearTimeout(listRefresh);
    listRefresh = setTimeout(() => loadSessions().catch(quiet), 300);
  }

  function renderSessionList() {
    const list = $('session-list');
    const currentId = state.current && state.current.id;
    list.replaceChildren(...state.order.map((id) => {
      const s = state.sessions.get(id);
      const status = s.live
        ? el('span', { class: 'status live', text: 'live' })
        : el('span', { class: `status ${s.status}`, text: s.status });
      const link = el('a', { href: `#session=${encodeURIComponent(id)}`, 'data-session-id': id },
        el('span', { class: 'when', text: fmtDay(s.start_ms) }),
        status,
        el('span', { class: 'sub', text: sessionSpan(s) }));
      if (id === currentId) link.setAttribute('aria-current', 'true');
      return el('li', {}, link);
    }));
    $('list-empty').hidden = state.order.length > 0;
    $('more').hidden = !state.nextCursor;
  }

  // ---- session view --------------------------------------------------------------------

  function openSession(id) {
    if (state.current && state.current.id === id) return;
    closeSession();
    state.current = {
      id,
      session: state.sessions.get(id) || null,
      payload: null,
      etag: null,
      state: 'computing',
      inflight: false,
      again: false,
      retryTimer: null,
      failures: 0,
    };
    document.body.classList.add('has-session');
    $('placeholder').hidden = true;
    $('session-view').hidden = false;
    $('charts').replaceChildren();
    $('phases').hidden = true;
    setNotice(null);
    renderSessionHead();
    renderSessionList();
    paintFreshness();
    if (!state.current.session) loadSession(id).catch(quiet);
    subscribe();
    loadTelemetry();
  }

  function closeSession() {
    const cur = state.current;
    if (cur) {
      clearTimeout(cur.retryTimer);
      if (state.socket && state.socket.connected) {
        state.socket.emit('unsubscribe', { session_id: cur.id });
      }
    }
    state.current = null;
    for (const chart of charts.values()) chart.u.destroy();
    charts.clear();
    document.body.classList.remove('has-session');
    $('session-view').hidden = true;
    $('placeholder').hidden = !state.token;
    renderSessionList();
  }

  async function loadSession(id) {
    const response = await api(`/api/v1/sessions/${encodeURIComponent(id)}`);
    if (response.status === 404) {
      setNotice('This session does not exist or is not yours.');
      return;
    }
    if (!response.ok) return;
    const session = await response.json();
    state.sessions.set(id, session);
    if (state.current && state.current.id === id) {
      state.current.session = session;
      renderSessionHead();
    }
  }

  function renderSessionHead() {
    const cur = state.current;
    const s = cur && cur.session;
    $('session-title').textContent = s ? fmtDay(s.start_ms) : 'Session';
    $('session-meta').textContent = s ? `${sessionSpan(s)} · ${s.live ? 'live' : s.status}` : '';
    $('session-notes').textContent = (s && s.notes) || '';
    $('session-notes').hidden = !(s && s.notes);
  }

  function setNotice(text) {
    $('notice').textContent = text || '';
    $('notice').hidden = !text;
  }

  // ---- telemetry -----------------------------------------------------------------------

  async function loadTelemetry() {
    const cur = state.current;
    if (!cur || !state.token) return;
    if (cur.inflight) {
      cur.again = true;
      return;
    }
    cur.inflight = true;
    clearTimeout(cur.retryTimer);
    let retryMs = null;
    try {
      const query = new URLSearchParams({
        window_minutes: String(state.windowMinutes), resolution: 'auto', metrics: 'all',
      });
      const headers = cur.etag ? { 'If-None-Match': cur.etag } : {};
      const response = await api(`/api/v1/sessions/${encodeURIComponent(cur.id)}/telemetry?${query}`, headers);
      if (cur !== state.current) return;
      cur.failures = 0;
      if (response.status === 304) {
        cur.state = 'ready';
      } else if (response.status === 404) {
        setNotice('This session does not exist or is not yours.');
        cur.state = 'failed';
      } else if (response.status === 202) {
        const body = await response.json().catch(() => null);
        cur.state = 'computing';
        retryMs = retryAfterMs(response, body);
      } else if (response.status === 429 || response.status >= 500) {
        const body = await response.json().catch(() => null);
        retryMs = retryAfterMs(response, body);
      } else if (response.ok) {
        const body = await response.json();
        cur.state = body.state;
        cur.etag = body.state === 'ready' || body.state === 'no_data' ? response.headers.get('ETag') : null;
        if (body.telemetry) render(body.telemetry);
        if (body.state === 'no_data') setNotice('No samples in this window yet.');
        else if (body.state === 'failed' && body.error) setNotice(`Telemetry is delayed (${body.error.code}); retrying.`);
        else setNotice(null);
        if (body.state === 'stale' || body.state === 'failed' || body.state === 'computing') {
          retryMs = retryAfterMs(response, body);
        }
      } else {
        setNotice(`The server answered HTTP ${response.status}.`);
      }
    } catch (error) {
      if (error instanceof AuthError) return;
      cur.failures += 1;
      retryMs = Math.min(30000, 1000 * 2 ** cur.failures);
    } finally {
      cur.inflight = false;
      if (cur === state.current) {
        paintFreshness();
        if (cur.again) {
          cur.again = false;
          loadTelemetry();
        } else if (retryMs != null) {
          cur.retryTimer = setTimeout(loadTelemetry, retryMs);
        }
      }
    }
  }

  function render(payload) {
    const cur = state.current;
    cur.payload = payload;
    if (cur.session && payload.live !== cur.session.live) refreshSessionsSoon();
    const codes = METRIC_ORDER.filter((code) => payload.metrics[code]);
    for (const [code, chart] of charts) {
      if (!codes.includes(code)) {
        chart.u.destroy();
        chart.card.remove();
        charts.delete(code);
      }
    }
    const container = $('charts');
    codes.forEach((code, index) => {
      const metric = payload.metrics[code];
      let chart = charts.get(code);
      if (!chart) {
        chart = createChart(code, metric, payload);
        charts.set(code, chart);
      }
      if (container.children[index] !== chart.card) container.insertBefore(chart.card, container.children[index] || null);
      chart.payload = payload;
      chart.u.setData(chartData(metric), true);
      chart.summary.replaceChildren(...summary(code, metric));
    });
    renderPhaseTable(payload, codes);
    renderSessionHead();
    state.renders += 1;
  }

  /** uPlot columns. Scalar: [x, max, min, mean]; a null row in every gap breaks line and band. */
  function chartData(metric) {
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

  function createChart(code, metric, payload) {
    const color = COLORS[code] || '#475467';
    const unit = UNITS[metric.unit] || metric.unit;
    const summaryNode = el('div', { class: 'summary' });
    const body = el('div', { class: 'chart-body' });
    const card = el('article', { class: 'chart-card', 'data-metric': code },
      el('div', { class: 'chart-head' },
        el('h2', {}, el('span', { class: 'dot', style: `background:${color}` }),
          metric.display_name, el('span', { class: 'unit', text: unit })),
        summaryNode),
      body);
    $('charts').append(card);
    const chart = { card, body, summary: summaryNode, kind: metric.kind, payload, u: null };
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
    return chart;
  }

  function xRange(payload) {
    const w = payload.window;
    return [w.start_ms / 1000, w.end_ms / 1000];
  }

  /** Before / during / after shading and the session edges, drawn under the series. */
  function drawPhases(u, payload) {
    if (!payload) return;
    const w = payload.window;
    const { ctx } = u;
    const { left, top, width, height } = u.bbox;
    const x = (ms) => Math.min(left + width, Math.max(left, u.valToPos(ms / 1000, 'x', true)));
    const sessionEnd = w.session_end_ms == null ? w.end_ms : w.session_end_ms;
    const spans = [
      ['before', w.start_ms, w.session_start_ms],
      ['during', w.session_start_ms, sessionEnd],
      ['after', sessionEnd, w.end_ms],
    ];
    const ratio = window.devicePixelRatio || 1;
    ctx.save();
    ctx.font = `${Math.round(10.5 * ratio)}px system-ui, sans-serif`;
    ctx.textBaseline = 'top';
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

  function summary(code, metric) {
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

  function renderPhaseTable(payload, codes) {
    const table = $('phase-table');
    const phases = ['before', 'during', 'after'];
    const head = el('thead', {}, el('tr', {}, el('th', { text: 'Metric' }),
      ...phases.map((p) => el('th', { text: p }))));
    const rows = codes.map((code) => {
      const metric = payload.metrics[code];
      const unit = UNITS[metric.unit] || metric.unit;
      return el('tr', { 'data-metric': code },
        el('th', {}, metric.display_name, el('div', { class: 'range', text: unit })),
        ...phases.map((phase) => phaseCell(code, metric, metric.phases && metric.phases[phase])));
    });
    table.replaceChildren(head, el('tbody', {}, ...rows));
    $('phases').hidden = codes.length === 0;
  }

  function phaseCell(code, metric, stats) {
    if (!stats || !stats.count) return el('td', { class: 'range', text: '—' });
    const coverage = Math.round((stats.coverage || 0) * 100);
    const bar = el('span', { class: 'coverage', title: `${coverage}% of buckets have samples` },
      el('span', { style: `width:${coverage}%` }));
    if (metric.kind === 'cumulative') {
      return el('td', {}, el('span', { class: 'value', text: fmtValue(code, stats.sum) }),
        el('div', { class: 'range', text: `${plural(stats.count, 'sample')} · ${coverage}% covered` }), bar);
    }
    return el('td', {},
      el('span', { class: 'value', text: fmtValue(code, stats.mean) }),
      el('div', { class: 'range', text: `${fmtValue(code, stats.min)}–${fmtValue(code, stats.max)} · ${coverage}% covered` }),
      bar);
  }

  // ---- freshness and connection ----------------------------------------------------------

  function paintFreshness() {
    const badge = $('freshness');
    const cur = state.current;
    if (!cur) return;
    const live = cur.session ? cur.session.live : cur.payload && cur.payload.live;
    const asOf = cur.payload ? fmtClock(cur.payload.computed_at_ms) : null;
    let kind, text;
    if (state.connectionShown === 'reconnecting' && live) {
      kind = 'reconnecting'; text = asOf ? `reconnecting… · as of ${asOf}` : 'reconnecting…';
    } else if (cur.state === 'computing' || (!cur.payload && cur.state !== 'no_data')) {
      kind = 'computing'; text = 'computing…';
    } else if (cur.state === 'stale') {
      kind = 'stale'; text = asOf ? `stale · as of ${asOf}` : 'stale';
    } else if (cur.state === 'failed') {
      kind = 'failed'; text = asOf ? `delayed · as of ${asOf}` : 'delayed';
    } else if (live) {
      kind = 'live'; text = asOf ? `live · ${asOf}` : 'live';
    } else {
      kind = 'asof'; text = asOf ? `as of ${asOf}` : 'up to date';
    }
    badge.dataset.kind = kind;
    badge.textContent = text;
  }

  function setConnection(connection) {
    state.connection = connection;
    clearTimeout(setConnection.timer);
    if (connection === 'reconnecting' && state.connectionShown === 'online') {
      // A brief drop is not news: say so only if it lasts.
      setConnection.timer = setTimeout(paintConnection, RECONNECT_GRACE_MS);
    } else {
      paintConnection();
    }
  }

  function paintConnection() {
    state.connectionShown = state.connection;
    const node = $('connection');
    node.dataset.state = state.connection;
    node.textContent = {
      connecting: 'connecting…',
      online: 'live updates on',
      reconnecting: 'reconnecting…',
      'signed-out': 'signed out',
    }[state.connection];
    paintFreshness();
  }

  // ---- Socket.IO -----------------------------------------------------------------------

  function connect() {
    const socket = io({
      auth: { token: state.token },
      reconnection: true,
      reconnectionAttempts: Infinity,
      reconnectionDelay: 1000,
      reconnectionDelayMax: 30000,
      randomizationFactor: 0.5,
      timeout: 10000,
    });
    state.socket = socket;
    socket.on('connect', () => {
      state.reconnectAttempt = 0;
      setConnection('online');
      subscribe();
      loadSessions().catch(quiet);
    });
    socket.on('disconnect', (reason) => {
      if (state.socket !== socket) return;
      setConnection('reconnecting');
      if (reason === 'io server disconnect') reconnectLater(socket);
    });
    socket.on('connect_error', (error) => {
      const code = (error && error.data && error.data.code) || (error && error.message);
      if (AUTH_CODES.has(code)) {
        signOut('The server refused the token: it is missing, invalid or expired.');
        return;
      }
      setConnection('reconnecting');
      if (!socket.active) reconnectLater(socket);
    });
    socket.on('error', (event) => {
      if (event && AUTH_CODES.has(event.code)) signOut('The token has expired.');
    });
    socket.on('session.updated', (event) => {
      state.updatesReceived += 1;
      const cur = state.current;
      if (cur && event.session_id === cur.id) loadTelemetry();
    });
    socket.on('session.status', (event) => {
      const known = state.sessions.get(event.session_id);
      if (!known) {
        refreshSessionsSoon();
        return;
      }
      Object.assign(known, { status: event.status, live: event.live, start_ms: event.start_ms, end_ms: event.end_ms });
      renderSessionList();
      if (state.current && state.current.id === event.session_id) {
        renderSessionHead();
        loadSession(event.session_id).catch(quiet);
        loadTelemetry();
      }
    });
  }

  /** Manual reconnects (after a server-side disconnect or refusal) back off forever, capped. */
  function reconnectLater(socket) {
    const delay = Math.min(30000, 1000 * 2 ** state.reconnectAttempt) * (0.5 + Math.random());
    state.reconnectAttempt = Math.min(state.reconnectAttempt + 1, 10);
    setTimeout(() => {
      if (state.socket === socket && !socket.connected) socket.connect();
    }, delay);
  }

  function subscribe() {
    const cur = state.current;
    const socket = state.socket;
    if (!cur || !socket || !socket.connected) return;
    const request = { session_id: cur.id };
    if (cur.payload) request.since_watermark = cur.payload.source_watermark;
    socket.timeout(10000).emit('subscribe', request, (error, ack) => {
      if (cur !== state.current) return;
      if (error || !ack) {
        if (socket.connected) setTimeout(subscribe, 3000);
        return;
      }
      if (!ack.ok) {
        if (ack.code === 'SESSION_NOT_FOUND') setNotice('This session does not exist or is not yours.');
        else if (ack.code === 'RATE_LIMITED') setTimeout(subscribe, 3000);
        return;
      }
      const shown = cur.payload ? cur.payload.source_watermark : -1;
      if (ack.session_watermark > shown || ack.state !== cur.state) loadTelemetry();
    });
  }

  // ---- formatting ----------------------------------------------------------------------

  function fmtValue(code, value) {
    const digits = DECIMALS[code] != null ? DECIMALS[code] : 1;
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  }

  function fmtClock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
  }

  function fmtHourMinute(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
  }

  function fmtDay(ms) {
    return new Date(ms).toLocaleString([], {
      weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', hour12: false,
    });
  }

  function fmtMinutes(ms) {
    const minutes = Math.max(0, Math.round(ms / 60000));
    return minutes < 90 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  function sessionSpan(s) {
    const hm = fmtHourMinute;
    if (s.end_ms == null) return `since ${hm(s.start_ms)} · ${fmtMinutes(Date.now() - s.start_ms)} so far`;
    return `${hm(s.start_ms)}–${hm(s.end_ms)} · ${fmtMinutes(s.end_ms - s.start_ms)}`;
  }

  function plural(count, noun) {
    return `${count.toLocaleString()} ${noun}${count === 1 ? '' : 's'}`;
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

  function chartWidth(body) {
    return Math.max(240, Math.floor(body.clientWidth || body.parentElement.clientWidth - 24));
  }

  function chartHeight() {
    return window.matchMedia('(max-width: 760px)').matches ? 170 : 200;
  }

  function quiet(error) {
    if (!(error instanceof AuthError)) console.debug('vitalcast:', error && error.message);
  }

  // ---- start ---------------------------------------------------------------------------

  function start() {
    state.token = readToken();
    if (!state.token) {
      signOut('');
      return;
    }
    document.body.classList.remove('signed-out');
    $('signin').hidden = true;
    loadSessions().catch(quiet);
    connect();
    route();
  }

  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('signin-token').value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('signin-token').value = '';
    start();
  });
  $('window').addEventListener('change', (event) => {
    state.windowMinutes = Number(event.target.value);
    const cur = state.current;
    if (!cur) return;
    cur.etag = null;
    cur.payload = null;
    cur.state = 'computing';
    paintFreshness();
    loadTelemetry();
  });
  $('refresh').addEventListener('click', () => loadSessions().catch(quiet));
  $('more').addEventListener('click', () => loadSessions({ append: true }).catch(quiet));
  $('back').addEventListener('click', () => { location.hash = ''; });
  $('home').addEventListener('click', (event) => { event.preventDefault(); location.hash = ''; });
  window.addEventListener('hashchange', () => {
    if (hashParams().get('token')) start();
    else if (state.token) route();
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.token) {
      loadSessions().catch(quiet);
      loadTelemetry();
    }
  });
  // Without a socket, a live session is still kept current, just less promptly.
  setInterval(() => {
    const cur = state.current;
    if (cur && state.connection !== 'online' && cur.session && cur.session.live) loadTelemetry();
  }, POLL_WHILE_OFFLINE_MS);
  // Live sessions' "so far" durations.
  setInterval(() => {
    if (state.current && state.current.session && state.current.session.live) renderSessionHead();
  }, 30000);
  new ResizeObserver(() => {
    for (const chart of charts.values()) {
      chart.u.setSize({ width: chartWidth(chart.body), height: chartHeight() });
    }
  }).observe($('charts'));

  start();
})();
