// "Download CSV": this window's raw samples of the open session.
//
// The page's CSP allows no navigation to the API with a token, so the CSV is fetched with the
// bearer header and handed to the browser as a blob URL behind a download link.
import { AuthError, api, retryAfterMs } from '../api.js';
import { el, saveBlob } from '../format.js';
import { count } from '../inspect.js';

export function exportCsv(view) {
  const button = el('button', {
    type: 'button',
    id: 'export-csv',
    class: 'control-button',
    title: "Download this window's raw samples as CSV",
    text: 'Download CSV',
  });
  button.addEventListener('click', () => download(view, button));
  return { node: button, slot: 'head' };
}

async function download(view, button) {
  button.disabled = true;
  try {
    const query = new URLSearchParams({ kind: 'samples', window_minutes: String(view.windowMinutes) });
    const response = await api(
      `/api/v1/sessions/${encodeURIComponent(view.id)}/export.csv?${query}`, { headers: { Accept: 'text/csv' } },
    );
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      view.setNotice(response.status === 429
        ? `Too many requests; export again in ${Math.round(retryAfterMs(response, body) / 1000)} s.`
        : `The export failed (${(body && body.code) || `HTTP ${response.status}`}).`);
      return;
    }
    saveBlob(await response.blob(), `vitalcast-session-${view.id}-samples.csv`);
    count('exports');
  } catch (error) {
    if (!(error instanceof AuthError)) view.setNotice('The export failed; try again.');
  } finally {
    button.disabled = false;
  }
}
