// One open session's telemetry: the payload drawn, its ETag, and the retries.
//
// Socket.IO events are hints: on session.updated the view calls load(), which re-GETs the
// telemetry with If-None-Match (an unchanged payload costs a 304) and the watermark of the
// payload it holds, so the server can answer with a delta (deltas.js) instead of the payload.
// A load asked for while one is in flight runs once after it; 202/stale/failed/429/5xx answers
// are asked again after Retry-After, network failures after an exponential backoff.
import { AuthError, api, retryAfterMs } from './api.js';
import { applyDelta } from './deltas.js';
import { count } from './inspect.js';
import { backoffMs } from './timing.js';

const NOT_FOUND = 'This session does not exist or is not yours.';

export class TelemetryLoader {
  /**
   * onPayload(payload): a new payload to draw (also after a delta).
   * onNotice(text | null): what the page should say about this session's data.
   * onSettled(): after every answer or failure (the freshness badge repaints).
   */
  constructor(sessionId, windowMinutes, { onPayload, onNotice, onSettled }) {
    this.sessionId = sessionId;
    this.windowMinutes = windowMinutes;
    this.onPayload = onPayload;
    this.onNotice = onNotice;
    this.onSettled = onSettled;
    /** The server's state of the last answer: computing, ready, stale, failed or no_data. */
    this.state = 'computing';
    this.payload = null;
    this.etag = null;
    this.inflight = false;
    this.again = false;
    this.retryTimer = null;
    this.failures = 0;
    this.closed = false;
  }

  /** Another window: forget the payload and its ETag (a delta could not apply to it). */
  setWindow(minutes) {
    this.windowMinutes = minutes;
    this.etag = null;
    this.payload = null;
    this.state = 'computing';
  }

  /** The session was closed: no more requests, late answers are dropped. */
  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
  }

  async load() {
    if (this.closed) return;
    if (this.inflight) {
      this.again = true;
      return;
    }
    this.inflight = true;
    clearTimeout(this.retryTimer);
    let retryMs = null;
    try {
      retryMs = await this.ask();
    } catch (error) {
      if (error instanceof AuthError) return;
      if (!(error instanceof TypeError && /fetch/i.test(error.message))) console.error('vitalcast:', error);
      this.failures += 1;
      retryMs = backoffMs(this.failures);
    } finally {
      this.inflight = false;
      if (!this.closed) {
        this.onSettled();
        if (this.again) {
          this.again = false;
          this.load();
        } else if (retryMs != null) {
          this.retryTimer = setTimeout(() => this.load(), retryMs);
        }
      }
    }
  }

  /** One GET; the delay before asking again, or null. */
  async ask() {
    const query = new URLSearchParams({
      window_minutes: String(this.windowMinutes), resolution: 'auto', metrics: 'all',
    });
    // The payload a delta would apply to: the one drawn, if it is of this window (a stale answer
    // is a delta too, so a page that drew one keeps receiving deltas while the recompute runs).
    const base = this.payload
      && this.payload.window.window_minutes === this.windowMinutes ? this.payload : null;
    if (base) query.set('since_watermark', String(base.source_watermark));
    const headers = this.etag ? { 'If-None-Match': this.etag } : {};
    const response = await api(
      `/api/v1/sessions/${encodeURIComponent(this.sessionId)}/telemetry?${query}`, { headers },
    );
    if (this.closed) return null;
    this.failures = 0;
    if (response.status === 304) {
      this.state = 'ready';
      return null;
    }
    if (response.status === 404) {
      this.onNotice(NOT_FOUND);
      this.state = 'failed';
      return null;
    }
    if (response.status === 202) {
      const body = await response.json().catch(() => null);
      this.state = 'computing';
      return retryAfterMs(response, body);
    }
    if (response.status === 429 || response.status >= 500) {
      const body = await response.json().catch(() => null);
      return retryAfterMs(response, body);
    }
    if (!response.ok) {
      this.onNotice(`The server answered HTTP ${response.status}.`);
      return null;
    }
    const body = await response.json();
    if (this.closed) return null;
    const payload = body.delta ? applyDelta(base, body.delta) : body.telemetry;
    if (body.delta && (!payload || this.payload !== base)) {
      // Not a delta for what is drawn: ask for the whole payload.
      this.etag = null;
      this.payload = null;
      this.again = true;
      return null;
    }
    this.state = body.state;
    this.etag = body.state === 'ready' || body.state === 'no_data' ? response.headers.get('ETag') : null;
    if (body.delta) count('deltasApplied');
    if (payload) {
      this.payload = payload;
      this.onPayload(payload);
    }
    if (body.state === 'no_data') this.onNotice('No samples in this window yet.');
    else if (body.state === 'failed' && body.error) this.onNotice(`Telemetry is delayed (${body.error.code}); retrying.`);
    else this.onNotice(null);
    if (body.state === 'stale' || body.state === 'failed' || body.state === 'computing') {
      return retryAfterMs(response, body);
    }
    return null;
  }
}
