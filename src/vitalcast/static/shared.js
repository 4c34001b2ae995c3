// The read-only page of a share link (/#share=vcs_…): one session of someone else's, live, with
// no session list and no control that writes.
//
// The share token is taken from the fragment (never sent to a server in a URL), removed from the
// address bar, kept in sessionStorage (this tab only) apart from a user token, and presented like
// any bearer token. GET /api/v1/share says which session it opens. When the owner revokes the
// link, or it expires, the server refuses the token (HTTP 401 or the socket's error event) and
// the page says so in place of the chart.
import { api, hashParams } from './api.js';
import { fmtDay } from './format.js';

const SHARE_KEY = 'vitalcast.share';

/** The share token of this tab: from the fragment (then removed from the URL) or storage. */
export function takeShare() {
  const params = hashParams();
  const fromUrl = params.get('share');
  if (fromUrl) {
    sessionStorage.setItem(SHARE_KEY, fromUrl);
    params.delete('share');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
  }
  return sessionStorage.getItem(SHARE_KEY);
}

export function forgetShare() {
  sessionStorage.removeItem(SHARE_KEY);
}

/** {share_id, session_id, label, expires_at_ms} of the token in use. */
export async function describeShare() {
  const response = await api('/api/v1/share');
  if (!response.ok) throw new Error(`share: HTTP ${response.status}`);
  return response.json();
}

/** Label the page as a shared, read-only view. */
export function showShared(info) {
  document.body.classList.add('shared');
  const badge = document.getElementById('shared-badge');
  badge.textContent = `Shared with you · read-only · until ${fmtDay(info.expires_at_ms)}`
    + (info.label ? ` · ${info.label}` : '');
  badge.hidden = false;
}
