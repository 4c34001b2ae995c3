// Every delay the dashboard waits or retries after, in milliseconds, in one place.

/** A socket drop shorter than this is not shown as "reconnecting…". */
export const RECONNECT_GRACE_MS = 2000;
/** While the socket is down, an open live session's telemetry is re-asked this often. */
export const POLL_WHILE_OFFLINE_MS = 15000;
/** A live chart's time axis moves on to now this often between two session.updated events. */
export const FOLLOW_NOW_MS = 5000;
/** A live session's "… so far" duration is redrawn this often. */
export const SESSION_CLOCK_MS = 30000;
/** session.status events arriving together cause one reload of the list, this long after. */
export const LIST_REFRESH_DEBOUNCE_MS = 300;
/** A subscribe that was not acknowledged (or was rate limited) is sent again after this. */
export const SUBSCRIBE_RETRY_MS = 3000;
/** How long a Socket.IO acknowledgement or connection attempt may take. */
export const SOCKET_TIMEOUT_MS = 10000;
/** Socket.IO's own reconnection delays (before randomisation). */
export const SOCKET_RECONNECT_DELAY_MS = 1000;
export const SOCKET_RECONNECT_DELAY_MAX_MS = 30000;
/** Retry-After when the server gave none, and the range a server's value is clamped to. */
export const RETRY_AFTER_DEFAULT_MS = 2000;
export const RETRY_AFTER_MIN_MS = 1000;
export const RETRY_AFTER_MAX_MS = 60000;
/** Exponential backoff after network failures: base · 2^attempt, capped. */
export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_MAX_MS = 30000;
/** A comparison with the last sessions that failed on the network is asked again after this. */
export const HISTORY_RETRY_MS = 5000;
/** A downloaded file's blob URL is released this long after the download starts. */
export const DOWNLOAD_URL_LIFETIME_MS = 60000;

/** The wait before retry `attempt` (1, 2, …) after a network failure. */
export function backoffMs(attempt) {
  return Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** attempt);
}
