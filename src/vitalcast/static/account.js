// "Download all my data" (top bar): the whole account as one zip (GET /api/v1/me/export:
// account.json, samples.csv, a FHIR bundle per session), fetched with the bearer header like
// the CSV export and handed to the browser as a download.
import { AuthError, api } from './api.js';
import { saveBlob } from './format.js';
import { count } from './inspect.js';

export function installAccountExport(button) {
  button.addEventListener('click', async () => {
    button.disabled = true;
    const label = button.textContent;
    button.textContent = 'Preparing…';
    try {
      const response = await api('/api/v1/me/export', { headers: { Accept: 'application/zip' } });
      if (!response.ok) {
        button.title = `The export failed (HTTP ${response.status}); try again.`;
        return;
      }
      saveBlob(await response.blob(), 'vitalcast-export.zip');
      count('accountExports');
    } catch (error) {
      if (!(error instanceof AuthError)) button.title = 'The export failed; try again.';
    } finally {
      button.disabled = false;
      button.textContent = label;
    }
  });
}
