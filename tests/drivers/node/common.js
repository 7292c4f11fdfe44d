'use strict';
// Shared helpers for the Node.js driver scripts run by tests/drivers.rs.
// Connection details come from PGTENANT_HOST, PGTENANT_PORT,
// PGTENANT_USER (e.g. app.acme), PGTENANT_PASSWORD, PGTENANT_DB, and
// optionally PGTENANT_CLIENTS and PGTENANT_POOL_SIZE.

const util = require('node:util');

const env = (name, dflt) => {
  const v = process.env[name] ?? dflt;
  if (v === undefined) throw new Error(`environment variable ${name} is not set`);
  return v;
};

const conn = {
  host: env('PGTENANT_HOST', '127.0.0.1'),
  port: Number(env('PGTENANT_PORT', '6432')),
  user: env('PGTENANT_USER', 'app.acme'),
  password: env('PGTENANT_PASSWORD', 'acme-secret'),
  database: env('PGTENANT_DB', 'acme'),
};
const CLIENTS = Number(env('PGTENANT_CLIENTS', '30'));
const POOL_SIZE = Number(env('PGTENANT_POOL_SIZE', '4'));
const BUDGET_MS = Number(env('PGTENANT_SCRIPT_BUDGET_S', '100')) * 1000;

class CheckFailed extends Error {}

function check(cond, msg) {
  if (!cond) throw new CheckFailed(msg);
}

function checkEq(got, want, what) {
  if (!util.isDeepStrictEqual(got, want)) {
    throw new CheckFailed(`${what}: expected ${util.inspect(want)}, got ${util.inspect(got)}`);
  }
}

// The seeded row `items` holds for id i (see tests/drivers.rs).
const item = (i) => ({ id: i, name: `item-${i}`, qty: i * 3 });

// Rows as plain objects, so deep comparison ignores drivers' row classes.
const plain = (rows) => [...rows].map((r) => ({ ...r }));

const yieldNow = () => new Promise((resolve) => setImmediate(resolve));

// Runs main() with an overall deadline; exit 0 on success, 1 with a clear
// message otherwise.
function run(driver, main) {
  const timer = setTimeout(() => {
    console.error(`FAILED (${driver}): did not finish within ${BUDGET_MS / 1000}s`);
    process.exit(1);
  }, BUDGET_MS);
  timer.unref();
  main().then(
    () => process.exit(0),
    (err) => {
      if (err instanceof CheckFailed) {
        console.error(`FAILED (${driver}): ${err.message}`);
      } else {
        console.error(`FAILED (${driver}): ${err && err.stack ? err.stack : err}`);
        if (err && err.code) console.error(`  SQLSTATE/code: ${err.code}`);
      }
      process.exit(1);
    },
  );
}

module.exports = {
  conn, CLIENTS, POOL_SIZE, CheckFailed, check, checkEq, item, plain, yieldNow, run,
};
