// Face of the cfengine module: the CFEngine protocol (version 2, "TLS") as cf-serverd 3.21 speaks it,
// a read-only file server for stock cf-agent (spec-https-front-cfserverd-sync.md §2,
// spec-cfengine-protocol.md), and the client half (remote run, sync's CFEngine pull). Only what other
// modules use is exported; tests of the codec import codec.ts itself.

import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import type { ListenAddress } from '../config/index.js';
import type { NodesRegistry } from '../nodes/index.js';

export interface CfengineServerOptions {
  readonly listen: ListenAddress;
  /** the relay's identity: the server's TLS certificate is made from this key */
  readonly privateKey: KeyObject;
  readonly nodeId: string;
  /** policies.directory: /var/rudder/share */
  readonly policiesDirectory: string;
  /** shared_folder.path */
  readonly sharedFolderPath: string;
  /** shared_files.path: `<path>/<uuid>/` readable by that node's key (Rudder's cf-serverd.st) */
  readonly sharedFilesPath?: string;
  /** https.allowed_networks: only these clients may connect */
  readonly allowedNetworks: readonly string[];
  /** extra read-only roots readable by every known node (Rudder's tools, ncf library…), absolute paths */
  readonly commonRoots?: readonly string[];
  /** roots readable by any client in allowed networks, even unknown (initial policies) */
  readonly publicRoots?: readonly string[];
  readonly maxConnections?: number;
  /**
   * connections one client address may hold at once; default none beyond maxConnections: Rudder's cf-serverd
   * lets every allowed address hold many (allowallconnects), and agents behind one NAT share an address
   * (spec-cfengine-protocol.md §13 pitfall 12)
   */
  readonly maxConnectionsPerAddress?: number;
  /** an idle connection is closed after this (default 600 s, cf-serverd's) */
  readonly idleTimeoutMs?: number;
  /** TLS handshake, version line and IDENTITY must be done within this (default 30 s, at most idleTimeoutMs) */
  readonly handshakeTimeoutMs?: number;
  /** cf-serverd's denybadclocks (default true): refuse STAT when the client clock is off by > 3600 s */
  readonly denyBadClocks?: boolean;
  /**
   * keys admitted for EXEC (inbound remote run, spec §2.5), as sha256//<base64 of SHA-256(SPKI DER)>:
   * the upstream's key. Any other key gets cf-serverd's refusal. Empty or absent: EXEC refused to all.
   */
  readonly execKeys?: readonly string[];
  /** what EXEC runs: classes (already checked) and a line writer; resolves with the exit code */
  readonly onExec?: ExecHandler;
  /** the command named in "cf-serverd executing cfruncommand: …" (default "onerelay sync") */
  readonly execCommand?: string;
  /**
   * requests answered before listening, through the real request path against a private temporary tree,
   * so that the first agents after a start find it optimised (default 3000, bounded to 3 s; 0: none)
   */
  readonly warmUpRequests?: number;
}

/** runs an inbound remote run; each writeLine() goes out as one "> line" transaction */
export type ExecHandler = (classes: readonly string[], writeLine: (line: string) => void) => Promise<number>;

export interface CfengineCounters {
  connection(result: 'accepted' | 'refused-network' | 'refused-limit' | 'refused-address-limit' | 'closed-error'): void;
  command(command: string, result: 'ok' | 'denied' | 'absent' | 'error'): void;
  bytesSent(bytes: number): void;
  /** a connection ended: who (node undefined = key not known), the agent's version line, and how it went (node activity) */
  session?(session: { node: string | undefined; peer: string; agent: string | undefined; ok: boolean; reason: string }): void;
}

export interface CfengineServer {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** the bound port (useful with port 0 in tests) */
  port(): number;
  /** replaces the allowed networks for new connections (the relay's own policies changed them) */
  setAllowedNetworks(cidrs: readonly string[]): void;
}

export interface CfengineServerDeps {
  readonly nodes: NodesRegistry;
  readonly counters: CfengineCounters;
  readonly log: Logger;
}

export { createCfengineServer } from './server.js';
export { makeServerCertificate } from './certificate.js';
/** the client half (remote run) */
export { CfengineClientError, connectCfengineServer, runExec } from './client.js';
export type { CfengineClient } from './client.js';
/** the copy client (cf-agent's copy_from against a stock cf-serverd), used by the sync's CFEngine pull */
export { CfengineRefusedError, createCopyClient } from './copy-client.js';
export type { CopyClient, CopyClientOptions, RemoteStat } from './copy-client.js';
