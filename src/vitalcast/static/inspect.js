// A read-only view of the page for the browser tests (and devtools), and the counters it shows.
//
// Nothing is put on `window` unless the page was opened with `window.__vitalcastInspect = true`
// set before its scripts ran (the tests add it as an init script). Then `window.vitalcast` has
// two getters: `charts` (metric code → {u: uPlot, card, history, …} of the open session) and
// `state`, a fresh snapshot on every read:
//   {current: {id, payload, state, histories} | null, connection, updatesReceived, deltasApplied,
//    exports, alertsShown}   (histories: metric code → the last GET /insights answer, null while asked)
// Writing to either changes nothing on the page.

const counts = new Map();

/** Count an event the tests wait for (updatesReceived, deltasApplied, exports). */
export function count(name) {
  counts.set(name, (counts.get(name) || 0) + 1);
}

/** `read()` returns {view, connection}: the open SessionView (or null) and the socket's state. */
export function installInspector(read) {
  if (window.__vitalcastInspect !== true) return;
  const inspector = {
    get charts() {
      const { view } = read();
      return new Map(view ? view.charts : []);
    },
    get state() {
      const { view, connection } = read();
      return {
        current: view ? {
          id: view.id,
          payload: view.loader.payload,
          state: view.loader.state,
          histories: new Map(view.histories.answers),
        } : null,
        connection,
        updatesReceived: counts.get('updatesReceived') || 0,
        deltasApplied: counts.get('deltasApplied') || 0,
        exports: counts.get('exports') || 0,
        accountExports: counts.get('accountExports') || 0,
        sessionsDeleted: counts.get('sessionsDeleted') || 0,
        alertsShown: counts.get('alertsShown') || 0,
      };
    },
  };
  Object.defineProperty(window, 'vitalcast', { value: Object.freeze(inspector) });
}
