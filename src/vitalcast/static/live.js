// Live updates over Socket.IO: one connection per signed-in page, the connection badge, the
// subscription of the open session, and event handlers any module can add with on().
import { refusalMessage } from './api.js';
import { count } from './inspect.js';
import {
  RECONNECT_GRACE_MS, SOCKET_RECONNECT_DELAY_MAX_MS, SOCKET_RECONNECT_DELAY_MS, SOCKET_TIMEOUT_MS,
  SUBSCRIBE_RETRY_MS, backoffMs,
} from './timing.js';

const AUTH_CODES = new Set([
  'UNAUTHENTICATED', 'TOKEN_INVALID', 'TOKEN_EXPIRED', 'TOKEN_REVOKED', 'SHARE_REVOKED', 'SHARE_EXPIRED',
]);
const MAX_RECONNECT_ATTEMPT = 10;
const LABELS = {
  connecting: 'connecting…',
  online: 'live updates on',
  reconnecting: 'reconnecting…',
  'signed-out': 'signed out',
};

export class Live {
  /**
   * onConnected(): after every (re)connection (the page reloads what it may have missed).
   * onRefused(reason): the server refused the token.
   * onShown(): the connection badge changed (the freshness badge depends on it).
   */
  constructor({ onConnected, onRefused, onShown }) {
    this.onConnected = onConnected;
    this.onRefused = onRefused;
    this.onShown = onShown;
    this.socket = null;
    /** connecting, online, reconnecting or signed-out; `shown` lags behind for a brief drop. */
    this.connection = 'connecting';
    this.shown = 'connecting';
    this.reconnectAttempt = 0;
    this.graceTimer = null;
    this.subscriber = null;
    // event name → handlers; they outlive reconnections.
    this.handlers = new Map();
    this.on('session.updated', () => count('updatesReceived'));
  }

  /** Call `handler(payload)` on every `event`; returns the function that removes it. */
  on(event, handler) {
    if (!this.handlers.has(event)) this.handlers.set(event, new Set());
    this.handlers.get(event).add(handler);
    return () => this.handlers.get(event).delete(handler);
  }

  connect(token) {
    this.disconnect();
    const socket = io({
      auth: { token },
      reconnection: true,
      reconnectionAttempts: Infinity,
      reconnectionDelay: SOCKET_RECONNECT_DELAY_MS,
      reconnectionDelayMax: SOCKET_RECONNECT_DELAY_MAX_MS,
      randomizationFactor: 0.5,
      timeout: SOCKET_TIMEOUT_MS,
    });
    this.socket = socket;
    socket.on('connect', () => {
      this.reconnectAttempt = 0;
      this.setConnection('online');
      this.sendSubscribe();
      this.onConnected();
    });
    socket.on('disconnect', (reason) => {
      if (this.socket !== socket) return;
      this.setConnection('reconnecting');
      if (reason === 'io server disconnect') this.reconnectLater(socket);
    });
    socket.on('connect_error', (error) => {
      const code = (error && error.data && error.data.code) || (error && error.message);
      if (AUTH_CODES.has(code)) {
        this.onRefused(refusalMessage(code));
        return;
      }
      this.setConnection('reconnecting');
      if (!socket.active) this.reconnectLater(socket);
    });
    socket.on('error', (event) => {
      if (event && AUTH_CODES.has(event.code)) {
        this.onRefused(event.code === 'TOKEN_EXPIRED' ? 'The token has expired.' : refusalMessage(event.code));
      }
    });
    socket.onAny((event, payload) => {
      for (const handler of this.handlers.get(event) || []) handler(payload);
    });
  }

  /** Close the connection (signing out); the badge says so. */
  disconnect() {
    if (this.socket) {
      this.socket.disconnect();
      this.socket = null;
    }
  }

  signedOut() {
    this.disconnect();
    this.connection = 'signed-out';
    this.paint();
  }

  get online() {
    return this.connection === 'online';
  }

  /**
   * Follow one session (null: none). `subscriber` is {id, closed, watermark(), onSubscribed(ack),
   * onNotFound()}: the open SessionView. Sent again after every reconnection.
   */
  follow(subscriber) {
    const previous = this.subscriber;
    if (previous && this.socket && this.socket.connected) {
      this.socket.emit('unsubscribe', { session_id: previous.id });
    }
    this.subscriber = subscriber;
    this.sendSubscribe();
  }

  sendSubscribe() {
    const subscriber = this.subscriber;
    const socket = this.socket;
    if (!subscriber || !socket || !socket.connected) return;
    const request = { session_id: subscriber.id };
    const watermark = subscriber.watermark();
    if (watermark != null) request.since_watermark = watermark;
    const retry = () => setTimeout(() => {
      if (this.subscriber === subscriber && socket.connected) this.sendSubscribe();
    }, SUBSCRIBE_RETRY_MS);
    socket.timeout(SOCKET_TIMEOUT_MS).emit('subscribe', request, (error, ack) => {
      if (this.subscriber !== subscriber || subscriber.closed) return;
      if (error || !ack) retry();
      else if (ack.ok) subscriber.onSubscribed(ack);
      else if (ack.code === 'SESSION_NOT_FOUND') subscriber.onNotFound();
      else if (ack.code === 'RATE_LIMITED') retry();
    });
  }

  setConnection(connection) {
    this.connection = connection;
    clearTimeout(this.graceTimer);
    if (connection === 'reconnecting' && this.shown === 'online') {
      // A brief drop is not news: say so only if it lasts.
      this.graceTimer = setTimeout(() => this.paint(), RECONNECT_GRACE_MS);
    } else {
      this.paint();
    }
  }

  paint() {
    this.shown = this.connection;
    const node = document.getElementById('connection');
    node.dataset.state = this.connection;
    node.textContent = LABELS[this.connection];
    this.onShown();
  }

  /** Manual reconnects (after a server-side disconnect or refusal) back off forever, capped. */
  reconnectLater(socket) {
    const delay = backoffMs(this.reconnectAttempt) * (0.5 + Math.random());
    this.reconnectAttempt = Math.min(this.reconnectAttempt + 1, MAX_RECONNECT_ATTEMPT);
    setTimeout(() => {
      if (this.socket === socket && !socket.connected) socket.connect();
    }, delay);
  }
}
