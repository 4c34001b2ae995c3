// Formatting and DOM helpers shared by the dashboard's modules.
import { DOWNLOAD_URL_LIFETIME_MS } from './timing.js';

export const DECIMALS = { heart_rate: 0, blood_oxygen: 1, skin_temperature: 2, steps: 0 };
export const UNITS = { degC: '°C', count: 'steps', 'breaths/min': 'br/min' };

/** A metric's unit as shown on the page. */
export function unitLabel(metric) {
  return UNITS[metric.unit] || metric.unit;
}

export const el = (tag, attrs = {}, ...children) => {
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

export function fmtValue(code, value) {
  const digits = DECIMALS[code] != null ? DECIMALS[code] : 1;
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: 0 });
}

export function fmtClock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

export function fmtHourMinute(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
}

export function fmtDay(ms) {
  return new Date(ms).toLocaleString([], {
    weekday: 'short', day: 'numeric', month: 'short', hour: '2-digit', minute: '2-digit', hour12: false,
  });
}

export function fmtMinutes(ms) {
  const minutes = Math.max(0, Math.round(ms / 60000));
  return minutes < 90 ? `${minutes} min` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function sessionSpan(s) {
  const hm = fmtHourMinute;
  if (s.end_ms == null) return `since ${hm(s.start_ms)} · ${fmtMinutes(Date.now() - s.start_ms)} so far`;
  return `${hm(s.start_ms)}–${hm(s.end_ms)} · ${fmtMinutes(s.end_ms - s.start_ms)}`;
}

export function plural(count, noun) {
  return `${count.toLocaleString()} ${noun}${count === 1 ? '' : 's'}`;
}

/** Hand `blob` to the browser as a download named `filename` (the page's CSP allows no
 * navigation to the API with a token, so files are fetched with the bearer header first). */
export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = el('a', { href: url, download: filename, hidden: '' });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), DOWNLOAD_URL_LIFETIME_MS);
}
