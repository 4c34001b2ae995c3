// How this session compares with the last ones: GET /api/v1/insights once per metric and open
// view, asked again (after Retry-After, a few times) while some of their payloads are still
// computing.
import { AuthError, api, retryAfterMs } from './api.js';
import { HISTORY_RETRY_MS } from './timing.js';

const HISTORY_SESSIONS = 20;
const HISTORY_ATTEMPTS = 10;

export class Histories {
  /** `onAnswer(code)` runs when a metric's answer arrives (the view draws it). */
  constructor(windowMinutes, onAnswer) {
    this.windowMinutes = windowMinutes;
    this.onAnswer = onAnswer;
    // metric code → the last answer (null while the first is on its way)
    this.answers = new Map();
    this.timers = new Set();
    // Bumped by reset(): answers to requests made before it are dropped.
    this.generation = 0;
  }

  answer(code) {
    return this.answers.get(code) || null;
  }

  /** Ask for `code` unless it was asked for already. */
  want(code) {
    if (!this.answers.has(code)) this.load(code, 0);
  }

  /** Forget every answer (another window, or the session changed state). */
  reset(windowMinutes = this.windowMinutes) {
    this.windowMinutes = windowMinutes;
    this.generation += 1;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.answers.clear();
  }

  close() {
    this.reset();
  }

  async load(code, attempt) {
    const generation = this.generation;
    if (!this.answers.has(code)) this.answers.set(code, null);
    let retryMs = null;
    try {
      const query = new URLSearchParams({
        metric: code, last: String(HISTORY_SESSIONS), window_minutes: String(this.windowMinutes),
      });
      const response = await api(`/api/v1/insights?${query}`);
      if (generation !== this.generation) return;
      const body = await response.json().catch(() => null);
      if (generation !== this.generation) return;
      if (response.ok && body) {
        this.answers.set(code, body);
        this.onAnswer(code);
        if (!body.complete) retryMs = retryAfterMs(response, body);
      } else if (response.status === 429 || response.status >= 500) {
        retryMs = retryAfterMs(response, body);
      }
    } catch (error) {
      if (error instanceof AuthError) return;
      retryMs = HISTORY_RETRY_MS;
    }
    if (retryMs != null && attempt + 1 < HISTORY_ATTEMPTS && generation === this.generation) {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        if (generation === this.generation) this.load(code, attempt + 1);
      }, retryMs);
      this.timers.add(timer);
    }
  }
}
