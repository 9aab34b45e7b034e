// What every bench does at the end: its figures as JSON under bench/out/, with the machine they
// were measured on.

import { mkdir, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname } from 'node:path';

export async function writeFigures(outFile: string, bench: string, figures: Record<string, unknown>, machine: Record<string, unknown> = {}): Promise<void> {
  await mkdir(dirname(outFile), { recursive: true });
  const document = { bench, date: new Date().toISOString(), machine: { cores: availableParallelism(), node: process.version, ...machine }, ...figures };
  await writeFile(outFile, `${JSON.stringify(document, null, 2)}\n`);
  console.log(`  figures written to ${outFile}`);
}
