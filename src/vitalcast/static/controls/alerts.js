// The alert banner of a live session: every `session.alert` of the open session, newest first,
// and, when the person allows it, a browser notification for each. An episode bar on a chart
// links here: clicking it highlights (and scrolls to) the alert it was announced as.
//
// The banner lists what was announced while the page had the session open, and what the server
// replays on a resubscription with since_watermark (after a reconnect).
import { el, fmtClock } from '../format.js';
import { count } from '../inspect.js';

const RULE_SYMBOLS = { '>=': '≥', '<=': '≤', '>': '>', '<': '<' };
const SLOT_MS = 300_000;

function ruleText(rule) {
  const [, op, threshold] = /^([<>]=?)(.*)$/.exec(rule) || [null, '', rule];
  return `${RULE_SYMBOLS[op] || op} ${threshold}`;
}

function describe(alert, payload) {
  const metric = payload && payload.metrics[alert.metric];
  const name = (metric && metric.display_name) || alert.metric.replace(/_/g, ' ');
  const unit = metric && metric.unit ? ` ${metric.unit}` : '';
  return {
    title: `${alert.level === 'critical' ? 'Critical' : 'Alert'}: ${name} ${ruleText(alert.rule)}${unit}`,
    body: `since ${fmtClock(alert.start_ms)} · most extreme ${alert.extreme}${unit}`,
  };
}

/** Same alert: same metric and rule, starting in the same five minutes (the server's rule). */
function sameEpisode(alert, episode) {
  return alert.metric === episode.metric && alert.rule === episode.rule
    && Math.floor(alert.start_ms / SLOT_MS) <= Math.floor((episode.end_ms - 1) / SLOT_MS)
    && Math.floor(episode.start_ms / SLOT_MS) <= Math.floor(alert.start_ms / SLOT_MS);
}

export function alertBanner(view) {
  const list = el('ul', { class: 'alert-list' });
  const notify = el('button', {
    type: 'button', class: 'link-button', id: 'alert-notify', text: 'Notify me in this browser',
  });
  const node = el('section', { class: 'alert-banner', id: 'alert-banner', role: 'alert', hidden: '' },
    el('div', { class: 'alert-head' }, el('strong', { text: 'Alerts' }), notify),
    list);
  const seen = new Map();

  const canAsk = () => 'Notification' in window && Notification.permission === 'default';
  notify.hidden = !canAsk();
  notify.addEventListener('click', () => {
    Notification.requestPermission().then(() => { notify.hidden = !canAsk(); });
  });

  view.on('session.alert', (alert) => {
    const key = `${alert.metric}|${alert.rule}|${alert.start_ms}`;
    if (seen.has(key)) return;
    const text = describe(alert, view.payload);
    const item = el('li', { class: `alert-item ${alert.level}`, 'data-rule': alert.rule, 'data-metric': alert.metric },
      el('span', { class: 'alert-title', text: text.title }),
      el('span', { class: 'alert-body muted', text: text.body }));
    seen.set(key, { alert, item });
    list.prepend(item);
    node.hidden = false;
    count('alertsShown');
    if ('Notification' in window && Notification.permission === 'granted') {
      // tag: one notification per episode and rule, even if the page hears of it twice
      new Notification(text.title, { body: text.body, tag: key });
    }
  });

  const onEpisode = (event) => {
    for (const { alert, item } of seen.values()) {
      const match = sameEpisode(alert, event.detail);
      item.classList.toggle('highlight', match);
      if (match) item.scrollIntoView({ block: 'nearest' });
    }
  };
  document.addEventListener('vitalcast:episode', onEpisode);

  return { node, slot: 'top', close: () => document.removeEventListener('vitalcast:episode', onEpisode) };
}
