// The session list in the sidebar: pages of GET /api/v1/sessions, newest first, kept current by
// session.status events (live.js) and reloads.
import { api, quiet } from './api.js';
import { el, fmtDay, sessionSpan } from './format.js';
import { LIST_REFRESH_DEBOUNCE_MS } from './timing.js';

const PAGE_SIZE = 50;
const $ = (id) => document.getElementById(id);

export class SessionList {
  /** `onLoaded(list)` runs after every load, so an open view can take its session's new row. */
  constructor({ onLoaded = () => {} } = {}) {
    this.byId = new Map();
    this.order = [];
    this.nextCursor = null;
    this.currentId = null;
    this.onLoaded = onLoaded;
    this.refreshTimer = null;
  }

  get(id) {
    return this.byId.get(id) || null;
  }

  /** The newest live session's id, or null. */
  newestLive() {
    return this.order.find((id) => this.byId.get(id).live) || null;
  }

  /** The first page again, or (append) the next one. */
  async load({ append = false } = {}) {
    const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (append && this.nextCursor) query.set('cursor', this.nextCursor);
    const response = await api(`/api/v1/sessions?${query}`);
    if (!response.ok) throw new Error(`sessions: HTTP ${response.status}`);
    const page = await response.json();
    if (!append) {
      this.byId.clear();
      this.order = [];
    }
    for (const session of page.items) this.put(session);
    this.nextCursor = page.next_cursor;
    this.render();
    this.onLoaded(this);
  }

  /** Reload soon: several events in a burst cost one request. */
  refreshSoon() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.load().catch(quiet), LIST_REFRESH_DEBOUNCE_MS);
  }

  /** One session's row, from GET /api/v1/sessions/{id}: null when it is not the caller's. */
  async fetchOne(id) {
    const response = await api(`/api/v1/sessions/${encodeURIComponent(id)}`);
    if (response.status === 404) return null;
    if (!response.ok) throw new Error(`session: HTTP ${response.status}`);
    const session = await response.json();
    this.byId.set(id, session);
    return session;
  }

  put(session) {
    if (!this.byId.has(session.id)) this.order.push(session.id);
    this.byId.set(session.id, session);
  }

  /** A deleted session leaves the list. */
  remove(id) {
    if (!this.byId.delete(id)) return;
    this.order = this.order.filter((known) => known !== id);
    this.render();
  }

  /** A session.status event: the known row takes it (returned), an unknown one reloads the list. */
  applyStatus(event) {
    const known = this.byId.get(event.session_id);
    if (!known) {
      this.refreshSoon();
      return null;
    }
    Object.assign(known, { status: event.status, live: event.live, start_ms: event.start_ms, end_ms: event.end_ms });
    this.render();
    return known;
  }

  /** Mark the open session (null: none). */
  setCurrent(id) {
    this.currentId = id;
    this.render();
  }

  render() {
    $('session-list').replaceChildren(...this.order.map((id) => {
      const s = this.byId.get(id);
      const status = s.live
        ? el('span', { class: 'status live', text: 'live' })
        : el('span', { class: `status ${s.status}`, text: s.status });
      const link = el('a', { href: `#session=${encodeURIComponent(id)}`, 'data-session-id': id },
        el('span', { class: 'when', text: fmtDay(s.start_ms) }),
        status,
        el('span', { class: 'sub', text: sessionSpan(s) }));
      if (id === this.currentId) link.setAttribute('aria-current', 'true');
      return el('li', {}, link);
    }));
    $('list-empty').hidden = this.order.length > 0;
    $('more').hidden = !this.nextCursor;
  }
}
