// A minimal OwnPolicies over a folder in Rudder's layout (inputs/rudder.json, spec-agentless-node.md §B.2),
// so the run log job works on its own; the own-policies module (own-policies.ts) is the full one and
// replaces this in the composition root once present. Re-read on refresh(), before each run.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { messageOf } from '../errors.js';
import type { OwnPolicies, OwnPolicyState, ReportMode } from './types.js';

export interface RefreshableOwnPolicies extends OwnPolicies {
  /** re-reads the folder; keeps the last good state when the files are unreadable */
  refresh(): Promise<void>;
}

const REPORT_MODES: readonly ReportMode[] = ['full-compliance', 'changes-only', 'reports-disabled'];
const text = (value: unknown): string | undefined => (typeof value === 'string' ? value : undefined);

/** rudder.json values are strings ("5", "true"), spec §B.2 */
export function stateFromRudderJson(inputsDirectory: string, variables: Record<string, unknown>, generation: number | undefined): OwnPolicyState | string {
  const nodeConfigId = text(variables['RUDDER_NODE_CONFIG_ID']);
  if (nodeConfigId === undefined || nodeConfigId === '') return 'RUDDER_NODE_CONFIG_ID is missing';
  const mode = text(variables['RUDDER_REPORT_MODE']) ?? 'full-compliance';
  if (!REPORT_MODES.includes(mode as ReportMode)) return `RUDDER_REPORT_MODE "${mode}" is not one of ${REPORT_MODES.join(', ')}`;
  const minutes = Number(text(variables['AGENT_RUN_INTERVAL']) ?? '5');
  const networks = variables['ALLOWED_NETWORKS'];
  return {
    nodeConfigId,
    reportMode: mode as ReportMode,
    policyMode: text(variables['RUDDER_COMPLIANCE_MODE']) === 'audit' ? 'audit' : 'enforce',
    runIntervalMs: (Number.isFinite(minutes) && minutes > 0 ? minutes : 5) * 60_000,
    allowedNetworks: Array.isArray(networks) ? networks.filter((n): n is string => typeof n === 'string') : [],
    davUser: text(variables['DAVUSER']),
    davPassword: text(variables['DAVPASSWORD']),
    generation,
    inputsDirectory,
    variables,
  };
}

export function createInputsOwnPolicies(inputsDirectory: string, parentLog: Logger): RefreshableOwnPolicies {
  const log = parentLog.child({ module: 'agentless' });
  const listeners = new Set<(state: OwnPolicyState) => void>();
  let state: OwnPolicyState | undefined;
  let lastProblem: string | undefined;
  return {
    current: () => state,
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async refresh() {
      let variables: unknown;
      try {
        variables = JSON.parse(await readFile(join(inputsDirectory, 'rudder.json'), 'utf8'));
      } catch (error) {
        const problem = (error as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : messageOf(error);
        if (problem !== undefined && problem !== lastProblem) {
          log.error({ event: 'own_policies_unreadable', code: 'RELAY_ERR_CONFIG_FILE', file: join(inputsDirectory, 'rudder.json'), error: problem }, 'the relay\'s own rudder.json cannot be read; keeping the last policies read');
        }
        lastProblem = problem;
        return;
      }
      const generated = Number((await readFile(join(inputsDirectory, 'rudder-promises-generated'), 'utf8').catch(() => '')).trim());
      const next =
        typeof variables === 'object' && variables !== null && !Array.isArray(variables)
          ? stateFromRudderJson(inputsDirectory, variables as Record<string, unknown>, Number.isFinite(generated) && generated > 0 ? generated : undefined)
          : 'not a JSON object';
      if (typeof next === 'string') {
        if (next !== lastProblem) log.error({ event: 'own_policies_invalid', code: 'RELAY_ERR_CONFIG_VALUE', file: join(inputsDirectory, 'rudder.json'), error: next }, 'the relay\'s own rudder.json is not usable; keeping the last policies read');
        lastProblem = next;
        return;
      }
      lastProblem = undefined;
      const changed = state?.nodeConfigId !== next.nodeConfigId;
      state = next;
      if (changed) for (const listener of listeners) listener(next);
    },
  };
}
