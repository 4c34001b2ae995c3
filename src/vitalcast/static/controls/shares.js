// "Share": read-only links to the open session for a caregiver (the owner's page only).
//
// Create (how long, an optional label) → the link is shown once with a Copy button: the server
// keeps only a hash of its token. The list shows every link of the session with its state and a
// Revoke button; revoking ends the viewer's page within a second.
import { AuthError, api } from '../api.js';
import { el, fmtDay } from '../format.js';

const DURATIONS = [
  [60, '1 hour'], [8 * 60, '8 hours'], [24 * 60, '1 day'], [7 * 24 * 60, '7 days'],
];

export function shareControl(view) {
  const minutes = el('select', { id: 'share-minutes', 'aria-label': 'Link valid for' });
  for (const [value, label] of DURATIONS) minutes.append(el('option', { value: String(value), text: label }));
  const label = el('input', {
    id: 'share-label', type: 'text', maxlength: '200', placeholder: 'Label (optional)', 'aria-label': 'Label',
  });
  const create = el('button', { type: 'button', id: 'share-create', class: 'control-button', text: 'Create link' });
  const link = el('input', { id: 'share-url', type: 'text', readonly: 'readonly', 'aria-label': 'Share link' });
  const copy = el('button', { type: 'button', id: 'share-copy', class: 'control-button', text: 'Copy' });
  const fresh = el('div', { id: 'share-fresh', class: 'share-fresh', hidden: 'hidden' },
    el('span', { class: 'muted small', text: 'Shown once — copy it now:' }), link, copy);
  const list = el('ul', { id: 'share-list', class: 'share-list' });
  const node = el('section', { id: 'shares', class: 'panel shares' },
    el('h2', { text: 'Share this session' }),
    el('div', { class: 'share-form' }, minutes, label, create),
    fresh, list);

  const reload = () => load(view, list).catch(() => {});
  create.addEventListener('click', async () => {
    create.disabled = true;
    try {
      const body = { expires_in_minutes: Number(minutes.value) };
      if (label.value.trim()) body.label = label.value.trim();
      const response = await api(`/api/v1/sessions/${encodeURIComponent(view.id)}/shares`, { method: 'POST', body });
      const answer = await response.json().catch(() => null);
      if (!response.ok || !answer) {
        view.setNotice(`The link could not be created (${(answer && answer.code) || `HTTP ${response.status}`}).`);
        return;
      }
      link.value = answer.url;
      fresh.hidden = false;
      label.value = '';
      await reload();
    } catch (error) {
      if (!(error instanceof AuthError)) view.setNotice('The link could not be created; try again.');
    } finally {
      create.disabled = false;
    }
  });
  copy.addEventListener('click', async () => {
    link.select();
    try {
      await navigator.clipboard.writeText(link.value);
      copy.textContent = 'Copied';
    } catch {
      copy.textContent = 'Select and copy';
    }
  });
  list.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-share]');
    if (!button) return;
    button.disabled = true;
    try {
      const response = await api(`/api/v1/shares/${encodeURIComponent(button.dataset.share)}`, { method: 'DELETE' });
      if (!response.ok) view.setNotice(`The link could not be revoked (HTTP ${response.status}).`);
      await reload();
    } catch (error) {
      if (!(error instanceof AuthError)) view.setNotice('The link could not be revoked; try again.');
      button.disabled = false;
    }
  });
  reload();
  return { node, slot: 'bottom' };
}

async function load(view, list) {
  const response = await api(`/api/v1/sessions/${encodeURIComponent(view.id)}/shares`);
  if (!response.ok) return;
  const { items } = await response.json();
  list.replaceChildren(...items.map((share) => {
    const state = share.state === 'active' ? `until ${fmtDay(share.expires_at_ms)}` : share.state;
    const row = el('li', { class: 'share-row', 'data-state': share.state, 'data-id': share.id },
      el('span', { class: 'share-name', text: share.label || 'Link' }),
      el('span', { class: 'muted small', text: state }));
    if (share.state === 'active') {
      row.append(el('button', { type: 'button', class: 'control-button', 'data-share': share.id, text: 'Revoke' }));
    }
    return row;
  }));
}
