// The bearer token and the HTTP API.
//
// The token comes from the URL fragment (#token=…, never sent to a server), is kept in
// sessionStorage (this tab only) and travels only in the Authorization header and in the
// Socket.IO auth packet (live.js asks for it with currentToken()).
import { RETRY_AFTER_DEFAULT_MS, RETRY_AFTER_MAX_MS, RETRY_AFTER_MIN_MS } from './timing.js';

const TOKEN_KEY = 'vitalcast.token';

/** Thrown by api() after a 401: the page has signed out already, callers just stop. */
export class AuthError extends Error {}

let token = null;
let onRefused = () => {};

/** The URL fragment's parameters (#token=…&session=…). */
export function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ''));
}

/** Take a token from the fragment (removing it from the URL) or from this tab's storage. */
export function takeToken() {
  const params = hashParams();
  const fromUrl = params.get('token');
  if (fromUrl) {
    sessionStorage.setItem(TOKEN_KEY, fromUrl);
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  }
  token = sessionStorage.getItem(TOKEN_KEY);
  return token;
}

/** Keep a token typed into the sign-in form (the next takeToken() returns it). */
export function storeToken(value) {
  sessionStorage.setItem(TOKEN_KEY, value);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
  token = null;
}

export function currentToken() {
  return token;
}

/** Use `value` (a share token, shared.js) for every request of this page. */
export function useToken(value) {
  token = value;
}

const REFUSALS = {
  SHARE_REVOKED: 'The owner revoked this shared link.',
  SHARE_EXPIRED: 'This shared link has expired.',
  TOKEN_REVOKED: 'The token was revoked.',
};

/** What the page says when the server refuses its token with `code`. */
export function refusalMessage(code) {
  return REFUSALS[code] || 'The server refused the token: it is missing, invalid or expired.';
}

/** What to do when the server refuses the token (the entry module signs out). */
export function onTokenRefused(handler) {
  onRefused = handler;
}

/** A request to this server with the bearer token. `body`, when given, is sent as JSON.
 * A 401 signs the page out and throws AuthError; every other status is the caller's. */
export async function api(path, { method = 'GET', headers = {}, body } = {}) {
  const init = {
    method,
    headers: { Authorization: `Bearer ${token}`, Accept: 'application/json', ...headers },
    cache: 'no-store',
    credentials: 'omit',
  };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    const refused = await response.clone().json().catch(() => null);
    onRefused(refusalMessage(refused && refused.code));
    throw new AuthError('unauthenticated');
  }
  return response;
}

/** How long to wait before asking again: Retry-After, else the body's retry_after_seconds. */
export function retryAfterMs(response, body) {
  const header = Number(response.headers.get('Retry-After'));
  const seconds = Number.isFinite(header) && header > 0 ? header : body && body.retry_after_seconds;
  const ms = Number(seconds) * 1000 || RETRY_AFTER_DEFAULT_MS;
  return Math.min(RETRY_AFTER_MAX_MS, Math.max(RETRY_AFTER_MIN_MS, ms));
}

/** For .catch() of background requests: an AuthError was handled already, the rest is noise
 * worth a debug line (the next event or timer asks again). */
export function quiet(error) {
  if (!(error instanceof AuthError)) console.debug('vitalcast:', error && error.message);
}
