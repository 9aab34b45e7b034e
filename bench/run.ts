// Bench dispatcher: `npm run bench [-- <name>...]` runs the named benches, or all of them.
// A bench is bench/<name>.ts exporting `description` and `run()`; add it to `benches` below.

interface Bench {
  readonly description: string;
  run(): Promise<void>;
}

const benches: Record<string, () => Promise<Bench>> = {
  uploads: () => import('./uploads.js'),
  pipeline: () => import('./pipeline.js'),
  policies: () => import('./policies.js'),
  'remote-run': () => import('./remote-run.js'),
  cfengine: () => import('./cfengine.js'),
  sync: () => import('./sync.js'),
  verify: () => import('./verify.js'),
  faults: () => import('./faults.js'),
  ledger: () => import('./ledger.js'),
  footprint: () => import('./footprint.js'),
};

async function main(names: readonly string[]): Promise<number> {
  if (names.some((name) => name === '--help' || name === '-h' || name === '--list')) {
    console.log(`usage: npm run bench [-- <name>...]   (default: all)\nbenches: ${Object.keys(benches).join(', ')}`);
    return 0;
  }
  const unknown = names.filter((name) => !(name in benches));
  if (unknown.length > 0) {
    console.error(`unknown bench: ${unknown.join(', ')} (known: ${Object.keys(benches).join(', ')})`);
    return 2;
  }
  let failed = 0;
  for (const name of names.length > 0 ? names : Object.keys(benches)) {
    const started = Date.now();
    try {
      const bench = await benches[name]!();
      await bench.run();
      console.log(`[${name}] done in ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
    } catch (error) {
      failed++;
      console.error(`[${name}] failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    }
  }
  return failed === 0 ? 0 : 1;
}

// Ctrl-C, `timeout`, a closed terminal: exit through 'exit' handlers, which kill the servers a bench started
// (the default action of these signals ends the process without running them)
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));
process.once('SIGHUP', () => process.exit(129));
process.exitCode = await main(process.argv.slice(2));
