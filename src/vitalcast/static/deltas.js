// Telemetry deltas (GET …/telemetry?since_watermark=N → {state, delta}): the page keeps the
// payload it drew and applies what changed instead of fetching the whole payload again.
//
// A delta carries the changed head fields, and per metric either null (the metric is gone),
// {replace: true, …} (the whole metric), or an entry whose columns replace the buckets in
// [from_t, to_t) and whose other fields replace the metric's, `phases` and `insights` merged
// by name; `tails: {insights: {episodes: [k, items]}}` keeps the first k items of that list and
// appends the items (a live update extends the last episode without resending the others).

const COLUMNS = ['t', 'mean', 'sum', 'min', 'max', 'count'];
// Fields merged by name (a phase, an insight) instead of replaced.
const MERGED = ['phases', 'insights'];

function lowerBound(sorted, value) {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid] < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** `base` brought to the delta's payload, or null when `base` is not the delta's base (the
 *  caller then fetches the full payload). Never mutates `base`. */
export function applyDelta(base, delta) {
  if (!base || delta.base_watermark !== base.source_watermark || delta.resolution !== base.resolution) {
    return null;
  }
  const next = { ...base, metrics: { ...base.metrics } };
  for (const [key, value] of Object.entries(delta)) {
    if (key !== 'base_watermark' && key !== 'metrics') next[key] = value;
  }
  for (const [code, entry] of Object.entries(delta.metrics)) {
    if (entry === null) {
      delete next.metrics[code];
      continue;
    }
    if (entry.replace) {
      const { replace, ...metric } = entry;
      next.metrics[code] = metric;
      continue;
    }
    const old = next.metrics[code];
    if (!old) return null;
    const metric = { ...old };
    if ('from_t' in entry) {
      const lo = lowerBound(old.t, entry.from_t);
      const hi = lowerBound(old.t, entry.to_t);
      for (const column of COLUMNS) {
        if (column in old) metric[column] = [...old[column].slice(0, lo), ...entry[column], ...old[column].slice(hi)];
      }
    }
    for (const [key, value] of Object.entries(entry)) {
      if (key === 'from_t' || key === 'to_t' || key === 'tails' || COLUMNS.includes(key)) continue;
      metric[key] = MERGED.includes(key) ? { ...old[key], ...value } : value;
    }
    for (const [key, lists] of Object.entries(entry.tails || {})) {
      metric[key] = { ...metric[key] };
      for (const [field, [keep, items]] of Object.entries(lists)) {
        const held = Array.isArray(metric[key][field]) ? metric[key][field] : [];
        metric[key][field] = [...held.slice(0, keep), ...items];
      }
    }
    next.metrics[code] = metric;
  }
  return next;
}
