// The dashboard's own static/deltas.js applying telemetry deltas for the Python tests
// (tests/telemetry/deltas.py): one JSON line {base, delta} in, one JSON line out: the payload,
// or null when `base` is not the delta's base.
//
// deltas.js is an ES module in a package without "type": "module" (it is served to browsers,
// not run by node), so it is imported from its source text: node then needs no flag and prints
// no warning, whatever its version.
import { readFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';

const source = await readFile(new URL('../../src/vitalcast/static/deltas.js', import.meta.url), 'utf8');
const { applyDelta } = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  const { base, delta } = JSON.parse(line);
  process.stdout.write(`${JSON.stringify(applyDelta(base, delta))}\n`);
}
