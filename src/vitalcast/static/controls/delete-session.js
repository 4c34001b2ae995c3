// "Delete session": removes the open session after a confirmation that says what stays.
//
// The session, its computed views, their history and its change log are deleted; the raw
// samples are the person's stream, not the session's, so they stay (other sessions' windows and
// "Download all my data" still hold them). The confirmation is a modal <dialog>; nothing is
// deleted until its "Delete session" button is pressed.
import { AuthError, api } from '../api.js';
import { el } from '../format.js';
import { count } from '../inspect.js';

const WHAT_GOES = 'The session, its charts, its computed views and their history are deleted for good.';
const WHAT_STAYS = 'Your raw samples stay: they belong to your data stream, not to this session, and '
  + 'remain in other sessions\u2019 windows and in \u201cDownload all my data\u201d.';

/** `onDeleted(id)`: what the page does once the server deleted the session. */
export function deleteSession({ onDeleted }) {
  return (view) => {
    const button = el('button', {
      type: 'button',
      id: 'delete-session',
      class: 'control-button danger',
      title: 'Delete this session (its samples stay)',
      text: 'Delete session',
    });
    const dialog = confirmation();
    button.addEventListener('click', () => dialog.showModal());
    dialog.addEventListener('close', () => {
      if (dialog.returnValue === 'delete') remove(view, button, onDeleted);
    });
    document.body.append(dialog);
    return { node: button, slot: 'head', close: () => dialog.remove() };
  };
}

function confirmation() {
  const keep = el('button', { type: 'submit', value: 'keep', id: 'delete-keep', class: 'control-button', text: 'Keep it' });
  const confirm = el('button', {
    type: 'submit', value: 'delete', id: 'delete-confirm', class: 'control-button danger', text: 'Delete session',
  });
  const form = el('form', { method: 'dialog' },
    el('h2', { text: 'Delete this session?' }),
    el('p', { text: WHAT_GOES }),
    el('p', { id: 'delete-stays', text: WHAT_STAYS }),
    el('div', { class: 'dialog-buttons' }, keep, confirm));
  return el('dialog', { id: 'delete-dialog', class: 'confirm-dialog' }, form);
}

async function remove(view, button, onDeleted) {
  button.disabled = true;
  try {
    const response = await api(`/api/v1/sessions/${encodeURIComponent(view.id)}`, { method: 'DELETE' });
    if (response.status === 204 || response.status === 404) {
      count('sessionsDeleted');
      onDeleted(view.id);
      return;
    }
    const body = await response.json().catch(() => null);
    view.setNotice(`The session was not deleted (${(body && body.code) || `HTTP ${response.status}`}).`);
  } catch (error) {
    if (!(error instanceof AuthError)) view.setNotice('The session was not deleted; try again.');
  } finally {
    button.disabled = false;
  }
}
