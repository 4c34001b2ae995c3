// vitalcast dashboard, the entry module: it builds the parts and wires them together; each part
// is its own module.
//
//   api.js        the bearer token and fetch() with it        timing.js   every delay, named
//   sessions.js   the session list (sidebar)                  live.js     Socket.IO, the badge
//   view.js       the open session (charts, head, controls)   loader.js   its telemetry + retries
//   histories.js  its comparison with the last sessions       charts.js, insights.js, deltas.js,
//   inspect.js    read-only hook for the browser tests        format.js   drawing and helpers
//
// WHERE NEW UI GOES
// - A control of the open session (a button such as "Delete session", a panel such as its
//   shares, a banner such as an alert): a module in controls/ exporting a function
//   `(view) => ({node, slot, update?(session), close?()})`, added to SESSION_CONTROLS below.
//   The view makes it when a session opens and removes it when it closes; `slot` is 'head' (the
//   row beside the window selector), 'top' (above the charts) or 'bottom' (after the phase
//   table). view.js lists what a control may use: the session id and row, the payload drawn,
//   setNotice(), on('session.alert', …) for this session's Socket.IO events, onClose(). See
//   controls/export-csv.js for a complete one.
// - A control of the whole page (e.g. "Download all my data"): an element in index.html's
//   top bar, its handler in a module of its own, hooked up in start() below.
// - A reaction to a Socket.IO event of any session: live.on(event, handler) below.
import {
  currentToken, forgetToken, hashParams, onTokenRefused, quiet, storeToken, takeToken, useToken,
} from './api.js';
import { installAccountExport } from './account.js';
import { deleteSession } from './controls/delete-session.js';
import { alertBanner } from './controls/alerts.js';
import { exportCsv } from './controls/export-csv.js';
import { shareControl } from './controls/shares.js';
import { installInspector } from './inspect.js';
import { Live } from './live.js';
import { SessionList } from './sessions.js';
import { describeShare, forgetShare, showShared, takeShare } from './shared.js';
import { FOLLOW_NOW_MS, POLL_WHILE_OFFLINE_MS, SESSION_CLOCK_MS } from './timing.js';
import { SessionView } from './view.js';

/** The open session's controls, in the order they appear in their slot. */
const SESSION_CONTROLS = [
  exportCsv, shareControl, alertBanner, deleteSession({ onDeleted: (id) => forgetSession(id) }),
];
/** A shared page's (shared.js): reads only. */
const SHARED_CONTROLS = [exportCsv, alertBanner];

const $ = (id) => document.getElementById(id);

/** The open session, or null. */
let view = null;
/** On a share link's page (shared.js): the one session it opens once known, else ''. */
let sharedSession = null;

const sessions = new SessionList({
  onLoaded: (list) => {
    if (view) view.setSession(list.get(view.id));
  },
});

const live = new Live({
  onConnected: () => {
    if (sharedSession === null) sessions.load().catch(quiet);
  },
  onRefused: (reason) => signOut(reason),
  onShown: () => {
    if (view) view.paintFreshness();
  },
});

live.on('session.updated', (event) => {
  if (view && event.session_id === view.id) view.refresh();
});
live.on('session.status', (event) => {
  if (event.status === 'deleted') {
    forgetSession(event.session_id);
    return;
  }
  const known = sessions.applyStatus(event);
  const opened = view;
  if (known && opened && opened.id === event.session_id) {
    opened.setSession(known);
    sessions.fetchOne(opened.id).then((session) => opened.setSession(session)).catch(quiet);
    opened.statusChanged();
  }
});

onTokenRefused((reason) => signOut(reason));
installInspector(() => ({ view, connection: live.connection }));

// ---- routing ----------------------------------------------------------------------------

function route() {
  const id = sharedSession === null ? hashParams().get('session') : sharedSession;
  if (id) openSession(id);
  else closeSession();
}

/** On arrival without a session in the URL, open the newest live one (if there is one): that
 * is the chart a newcomer came for. Later visits to the list stay on the list. */
function openLiveByDefault() {
  if (hashParams().get('session') || view || sharedSession !== null) return;
  const id = sessions.newestLive();
  if (!id) return;
  history.replaceState(null, '', `${location.pathname}${location.search}#session=${encodeURIComponent(id)}`);
  route();
}

function openSession(id) {
  if (view && view.id === id) return;
  closeSession();
  const opened = new SessionView(id, {
    session: sessions.get(id),
    windowMinutes: Number($('window').value),
    live,
    controls: sharedSession === null ? SESSION_CONTROLS : SHARED_CONTROLS,
    compare: sharedSession === null,
    onLiveChanged: () => sessions.refreshSoon(),
  });
  view = opened;
  sessions.setCurrent(id);
  if (!opened.session) {
    sessions.fetchOne(id)
      .then((session) => (session ? opened.setSession(session) : opened.onNotFound()))
      .catch(quiet);
  }
  live.follow(opened);
  opened.refresh();
}

function closeSession() {
  if (view) {
    live.follow(null);
    view.close();
    view = null;
  }
  $('placeholder').hidden = !currentToken();
  sessions.setCurrent(null);
}

/** A deleted session (here or in another tab): out of the list, and closed if open. */
function forgetSession(id) {
  sessions.remove(id);
  if (view && view.id === id) {
    history.replaceState(null, '', location.pathname + location.search);
    closeSession();
  }
}

// ---- signing in and out -----------------------------------------------------------------

function signOut(reason) {
  if (sharedSession !== null) {
    endShared(reason);
    return;
  }
  forgetToken();
  live.signedOut();
  closeSession();
  document.body.classList.add('signed-out');
  $('signin').hidden = false;
  $('placeholder').hidden = true;
  $('signin-reason').textContent = reason || '';
}

installAccountExport($('export-all'));

/** A share link's page: that one session, live and read-only, labelled as shared. */
function startShared(share) {
  sharedSession = '';
  useToken(share);
  document.body.classList.remove('signed-out');
  document.body.classList.add('shared');
  $('signin').hidden = true;
  $('placeholder').hidden = true;
  live.connect(share);
  describeShare()
    .then((info) => {
      showShared(info);
      sharedSession = info.session_id;
      route();
    })
    .catch(quiet);
}

/** The link was revoked or has expired: the chart goes, the reason stays. */
function endShared(reason) {
  forgetShare();
  live.signedOut();
  closeSession();
  document.body.classList.add('share-ended');
  $('placeholder').hidden = true;
  $('signin').hidden = false;
  $('signin-title').textContent = 'This shared view has ended';
  $('signin-form').hidden = true;
  $('signin-help').hidden = true;
  $('signin-reason').textContent = reason || '';
}

function start() {
  // A user's own token in the URL wins over a share link opened earlier in this tab (a page
  // that shows a share starts afresh: the token stays in the URL for the reload to take).
  if (hashParams().get('token')) {
    forgetShare();
    if (sharedSession !== null) {
      location.reload();
      return;
    }
  }
  const share = takeShare();
  if (share) {
    startShared(share);
    return;
  }
  const token = takeToken();
  if (!token) {
    signOut('');
    return;
  }
  document.body.classList.remove('signed-out');
  $('signin').hidden = true;
  sessions.load().then(openLiveByDefault).catch(quiet);
  live.connect(token);
  route();
}

$('signin-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('signin-token').value.trim();
  if (!token) return;
  storeToken(token);
  $('signin-token').value = '';
  start();
});
$('window').addEventListener('change', (event) => {
  if (view) view.setWindow(Number(event.target.value));
});
$('refresh').addEventListener('click', () => sessions.load().catch(quiet));
$('more').addEventListener('click', () => sessions.load({ append: true }).catch(quiet));
$('back').addEventListener('click', () => { location.hash = ''; });
$('home').addEventListener('click', (event) => { event.preventDefault(); location.hash = ''; });
window.addEventListener('hashchange', () => {
  if (hashParams().get('token') || hashParams().get('share')) start();
  else if (currentToken()) route();
});
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible' && currentToken()) {
    sessions.load().catch(quiet);
    if (view) view.refresh();
  }
});
// Without a socket, a live session is still kept current, just less promptly.
setInterval(() => {
  if (view && !live.online && view.session && view.session.live) view.refresh();
}, POLL_WHILE_OFFLINE_MS);
setInterval(() => {
  if (view) view.followNow();
}, FOLLOW_NOW_MS);
setInterval(() => {
  if (view) view.tick();
}, SESSION_CLOCK_MS);
new ResizeObserver(() => {
  if (view) view.resize();
}).observe($('charts'));

start();
