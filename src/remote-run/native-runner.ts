// The native remote run (remote_run.mode = "native", issue 6): what `rudder remote run` does with
// cf-runagent, from this process. For each node (at most maxParallel at once): the CFEngine protocol
// client to <hostname>:<port> with the relay's key, the node's cf-serverd key checked against its pin in
// nodeslist.json, then EXEC -D<classes> and its output, each line prefixed "<hostname>> " as cf-runagent
// prints it. A node that cannot be reached, refuses us, or whose run fails counts as failed and gets a
// "<hostname>> !! …" line; nothing waits longer than the connect timeout or the caller's signal.

import { createHash, timingSafeEqual, type KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { CfengineClientError, connectCfengineServer, makeServerCertificate, runExec } from '../cfengine/index.js';
import { messageOf } from '../errors.js';
import type { KeyHash, NodeEntry } from '../nodes/index.js';
import type { NodeRunner } from './index.js';

export interface NativeRunnerOptions {
  /** the relay's RSA key: the nodes trust it (their policy download saved it) and admit it for cfruncommand */
  readonly privateKey: KeyObject;
  /** remote_run.port: the nodes' cf-serverd port */
  readonly port: number;
  readonly connectTimeoutMs: number;
  readonly maxParallel: number;
  readonly log: Logger;
  /** IDENTITY USERNAME (Rudder runs cf-runagent as root) */
  readonly username?: string;
}

/** undefined when the key matches the pin, else why not */
export function checkPin(publicKey: KeyObject, pin: KeyHash | undefined): string | undefined {
  if (pin === undefined) return 'no key hash for this node in the nodes list: its key cannot be checked';
  const spki = publicKey.export({ type: 'spki', format: 'der' });
  const digest = createHash(pin.type).update(spki).digest();
  if (digest.length === pin.bytes.length && timingSafeEqual(digest, pin.bytes)) return undefined;
  return `the key presented by the node (${pin.type}//${digest.toString('base64')}) does not match its pin in the nodes list (${pin.type}//${pin.bytes.toString('base64')})`;
}

export function createNativeRunner(options: NativeRunnerOptions): NodeRunner {
  const log = options.log.child({ module: 'remote-run-native' });
  // made on the first run: an RSA-4096 signature every front-door worker would pay at start otherwise
  let certificate: string | undefined;
  const parallel = Math.max(1, options.maxParallel);

  async function runOne(node: NodeEntry, conditions: readonly string[], output: (chunk: Buffer) => void, signal: AbortSignal): Promise<boolean> {
    const started = Date.now();
    const prefix = node.hostname;
    const say = (line: string): void => output(Buffer.from(line, 'utf8'));
    let client;
    try {
      client = await connectCfengineServer({
        host: node.hostname,
        port: options.port,
        privateKey: options.privateKey,
        certificate: (certificate ??= makeServerCertificate(options.privateKey)),
        connectTimeoutMs: options.connectTimeoutMs,
        verifyServerKey: (key) => checkPin(key, node.keyHash),
        signal,
        ...(options.username !== undefined ? { username: options.username } : {}),
      });
    } catch (error) {
      const message = error instanceof CfengineClientError ? error.message : `internal error: ${messageOf(error)}`;
      log.warn({ event: 'remote_run_node', node: node.id, hostname: node.hostname, error: message, ms: Date.now() - started }, 'remote run: cannot reach node');
      say(`${prefix}> !! cannot run the agent on ${node.hostname}:${options.port}: ${message}\n`);
      return false;
    }
    try {
      const result = await runExec(client, { classes: conditions }, prefix, say);
      const ok = result.complete && !result.refused && (result.exitCode === undefined || result.exitCode === 0);
      if (!result.complete) say(`${prefix}> !! the connection ended before the end of the run\n`);
      log.info(
        { event: 'remote_run_node', node: node.id, hostname: node.hostname, exitCode: result.exitCode, refused: result.refused, complete: result.complete, ms: Date.now() - started },
        ok ? 'remote run: node done' : 'remote run: node failed',
      );
      return ok;
    } catch (error) {
      const message = error instanceof CfengineClientError ? error.message : `internal error: ${messageOf(error)}`;
      log.warn({ event: 'remote_run_node', node: node.id, hostname: node.hostname, error: message, ms: Date.now() - started }, 'remote run: node failed');
      say(`${prefix}> !! remote run on ${node.hostname}:${options.port} failed: ${message}\n`);
      return false;
    } finally {
      client.close();
    }
  }

  return {
    async run(nodes, conditions, output, signal) {
      let failed = 0;
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < nodes.length) {
          const node = nodes[next++];
          if (node === undefined) continue;
          if (!(await runOne(node, conditions, output, signal))) failed += 1;
        }
      };
      await Promise.all(Array.from({ length: Math.min(parallel, nodes.length) }, () => worker()));
      return { failed };
    },
  };
}
