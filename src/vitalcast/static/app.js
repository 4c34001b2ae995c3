// vitalcast dashboard: sessions list, one uPlot chart per metric with its insights, phase
// statistics, how this session compares with the last ones, live redraw.
//
// The bearer token comes from the URL fragment (#token=…, never sent to a server), is kept in
// sessionStorage (this tab only) and travels only in the Authorization header and in the
// Socket.IO auth packet. Socket.IO events are hints: on session.updated the page re-GETs the
// telemetry with If-None-Match (an unchanged payload costs a 304) and the watermark of the
// payload it holds, so the server can answer with a delta (deltas.js) instead of the payload.
import {
  COLORS, METRIC_ORDER, chartData, chartHeight, chartWidth, createChart, followNow, renderPhaseTable, summary,
} from './charts.js';
import { applyDelta } from './deltas.js';
import { el, fmtClock, fmtDay, sessionSpan } from './format.js';
import { comparedValue, renderHistory, renderStrip } from './insights.js';

const TOKEN_KEY = 'vitalcast.token';
const AUTH_CODES = new Set(['UNAUTHENTICATED', 'TOKEN_INVALID', 'TOKEN_EXPIRED']);
const RECONNECT_GRACE_MS = 2000;
const POLL_WHILE_OFFLINE_MS = 15000;
// A live chart's time axis moves on to now this often between two session.updated events.
const FOLLOW_NOW_MS = 5000;
const HISTORY_SESSIONS = 20;
const HISTORY_ATTEMPTS = 10;

const $ = (id) => document.getElementById(id);

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
  deltasApplied: 0,
  exports: 0,
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

/** On arrival without a session in the URL, open the newest live one (if there is one): that
 * is the chart a newcomer came for. Later visits to the list stay on the list. */
function openLiveByDefault() {
  if (hashParams().get('session') || state.current) return;
  const live = state.order.find((id) => state.sessions.get(id).live);
  if (!live) return;
  history.replaceState(null, '', `${location.pathname}${location.search}#session=${encodeURIComponent(live)}`);
  route();
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
    // metric code → the last GET /insights answer (null while the first is on its way)
    histories: new Map(),
    historyTimers: new Set(),
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
    resetHistories(cur);
    if (state.socket && state.socket.connected) {
      state.socket.emit('unsubscribe', { session_id: cur.id });
    }
  }
  state.current = null;
  for (const chart of charts.values()) destroyChart(chart);
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
    // The payload a delta would apply to: the one drawn, if it is a ready one of this window.
    const base = cur.state === 'ready' && cur.payload
      && cur.payload.window.window_minutes === state.windowMinutes ? cur.payload : null;
    if (base) query.set('since_watermark', String(base.source_watermark));
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
      const payload = body.delta ? applyDelta(base, body.delta) : body.telemetry;
      if (body.delta && (!payload || cur.payload !== base)) {
        // Not a delta for what is drawn: ask for the whole payload.
        cur.etag = null;
        cur.payload = null;
        cur.again = true;
        return;
      }
      cur.state = body.state;
      cur.etag = body.state === 'ready' || body.state === 'no_data' ? response.headers.get('ETag') : null;
      if (body.delta) state.deltasApplied += 1;
      if (payload) render(payload);
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
    if (!(error instanceof TypeError && /fetch/i.test(error.message))) console.error('vitalcast:', error);
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
      destroyChart(chart);
      chart.card.remove();
      charts.delete(code);
    }
  }
  const container = $('charts');
  codes.forEach((code, index) => {
    const metric = payload.metrics[code];
    let chart = charts.get(code);
    if (!chart) {
      chart = createChart(container, code, metric, payload);
      charts.set(code, chart);
    }
    if (container.children[index] !== chart.card) container.insertBefore(chart.card, container.children[index] || null);
    chart.payload = payload;
    chart.u.setData(chartData(metric), true);
    chart.summary.replaceChildren(...summary(code, metric));
    renderStrip(chart.strip, code, metric);
  });
  renderPhaseTable($('phase-table'), payload, codes);
  $('phases').hidden = codes.length === 0;
  renderSessionHead();
  for (const code of codes) {
    if (cur.histories.get(code)) drawHistory(code);
    else loadHistory(code);
  }
  state.renders += 1;
}

// ---- export --------------------------------------------------------------------------

// The page's CSP allows no navigation to the API with a token, so the CSV is fetched with the
// bearer header and handed to the browser as a blob URL behind a download link.
async function downloadCsv() {
  const cur = state.current;
  if (!cur) return;
  const button = $('export-csv');
  button.disabled = true;
  try {
    const query = new URLSearchParams({ kind: 'samples', window_minutes: String(state.windowMinutes) });
    const response = await api(`/api/v1/sessions/${encodeURIComponent(cur.id)}/export.csv?${query}`, { Accept: 'text/csv' });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      setNotice(response.status === 429
        ? `Too many requests; export again in ${Math.round(retryAfterMs(response, body) / 1000)} s.`
        : `The export failed (${(body && body.code) || `HTTP ${response.status}`}).`);
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const link = el('a', { href: url, download: `vitalcast-session-${cur.id}-samples.csv`, hidden: '' });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
    state.exports += 1;
  } catch (error) {
    if (!(error instanceof AuthError)) setNotice('The export failed; try again.');
  } finally {
    button.disabled = false;
  }
}

function destroyChart(chart) {
  chart.u.destroy();
  if (chart.history) chart.history.u.destroy();
}

// ---- the last sessions -----------------------------------------------------------------

function resetHistories(cur) {
  for (const timer of cur.historyTimers) clearTimeout(timer);
  cur.historyTimers.clear();
  cur.histories.clear();
}

/** Once per metric and opened view: the metric across the last completed sessions, asked again
 * (after Retry-After, a few times) while some of their payloads are still computing. */
async function loadHistory(code, attempt = 0) {
  const cur = state.current;
  if (!cur || (attempt === 0 && cur.histories.has(code))) return;
  if (!cur.histories.has(code)) cur.histories.set(code, null);
  let retryMs = null;
  try {
    const query = new URLSearchParams({
      metric: code, last: String(HISTORY_SESSIONS), window_minutes: String(state.windowMinutes),
    });
    const response = await api(`/api/v1/insights?${query}`);
    if (cur !== state.current) return;
    const body = await response.json().catch(() => null);
    if (response.ok && body) {
      cur.histories.set(code, body);
      drawHistory(code);
      if (!body.complete) retryMs = retryAfterMs(response, body);
    } else if (response.status === 429 || response.status >= 500) {
      retryMs = retryAfterMs(response, body);
    }
  } catch (error) {
    if (error instanceof AuthError) return;
    retryMs = 5000;
  }
  if (retryMs != null && attempt + 1 < HISTORY_ATTEMPTS) {
    const timer = setTimeout(() => {
      cur.historyTimers.delete(timer);
      if (cur === state.current) loadHistory(code, attempt + 1);
    }, retryMs);
    cur.historyTimers.add(timer);
  }
}

/** The small chart of `code` from the last answer, with this session's current figure. */
function drawHistory(code) {
  const cur = state.current;
  const answer = cur && cur.histories.get(code);
  const chart = charts.get(code);
  if (!answer || !chart) return;
  const metric = cur.payload && cur.payload.metrics[code];
  const session = {
    id: cur.id,
    live: Boolean(cur.payload && cur.payload.live),
    value: comparedValue(answer, metric && metric.insights),
  };
  renderHistory(chart, code, answer, session, COLORS[code] || '#475467');
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
      resetHistories(state.current);
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

// ---- start ---------------------------------------------------------------------------

function quiet(error) {
  if (!(error instanceof AuthError)) console.debug('vitalcast:', error && error.message);
}

function start() {
  state.token = readToken();
  if (!state.token) {
    signOut('');
    return;
  }
  document.body.classList.remove('signed-out');
  $('signin').hidden = true;
  loadSessions().then(openLiveByDefault).catch(quiet);
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
  resetHistories(cur);
  paintFreshness();
  loadTelemetry();
});
$('export-csv').addEventListener('click', () => downloadCsv());
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
// A live chart's axis follows the clock, so silence since the last payload shows as it grows.
setInterval(() => {
  for (const chart of charts.values()) followNow(chart);
}, FOLLOW_NOW_MS);
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
