// What the reporting queue decides about one uploaded run log before forwarding it unchanged
// (spec-relayd.md §7.2–7.9): run info from the name, known node, bounded decompression, S/MIME
// signature (per verify mode), run log grammar and run-level checks, skip_event_types.

import { isRelayError } from '../errors.js';
import type { NodesRegistry, SignerCertificate } from '../nodes/index.js';
import { parseRelaxedRfc3339, parseRfc3339 } from './dates.js';
import { decodeReport } from './decode.js';
import type { Inspection, RejectReason, ReportInspector, ReportInspectorOptions, RunInfo } from './index.js';
import { isReportError } from './report-error.js';
import { checkRunlog, type RunlogSummary } from './runlog.js';
import { readSmime, stripTextHeader, verifySignedPart, verifySignedPartAsync, type SmimeParts } from './smime.js';

/**
 * Run info from a report file name (§7.3), undefined when the name has none. Tried in order:
 * v1 `<timestamp>@<nodeId>.log[.gz]…` (anything after is ignored; `_` in the timestamp stands for `:`),
 * v2 `<nodeId>_<timestamp>.log[.gz][.zip]` (must end there).
 */
export function parseRunInfo(name: string): RunInfo | undefined {
  // v1 (Rudder 6.0–8.0)
  const at = name.indexOf('@');
  if (at >= 0) {
    const timestamp = name.slice(0, at).replaceAll('_', ':');
    if (parseRfc3339(timestamp) !== undefined) {
      const dot = name.indexOf('.', at + 1);
      if (dot >= 0 && name.startsWith('.log', dot)) {
        const nodeId = name.slice(at + 1, dot);
        // relayd fails hard here (nom Failure): an empty node id does not fall back to v2
        return nodeId === '' ? undefined : { nodeId, timestamp };
      }
    }
  }
  // v2 (Rudder 8.1+)
  const underscore = name.indexOf('_');
  if (underscore < 0) return undefined;
  const dot = name.indexOf('.', underscore + 1);
  if (dot < 0) return undefined;
  const timestamp = name.slice(underscore + 1, dot).replaceAll('_', ':');
  if (parseRelaxedRfc3339(timestamp) === undefined) return undefined;
  if (!name.startsWith('.log', dot)) return undefined;
  let rest = name.slice(dot + 4);
  if (rest.startsWith('.gz')) rest = rest.slice(3);
  if (rest.startsWith('.zip')) rest = rest.slice(4);
  const nodeId = name.slice(0, underscore);
  if (rest !== '' || nodeId === '') return undefined;
  return { nodeId, timestamp };
}

export function createReportInspector(options: ReportInspectorOptions, nodes: NodesRegistry): ReportInspector {
  const skipEventTypes = new Set(options.skipEventTypes);
  // alone, an inspection verifies on the event loop (lowest latency); when others are in flight, the
  // RSA operations go to libuv's thread pool so a second core works while this one parses run logs
  let inFlight = 0;
  const verifySignature = (parts: SmimeParts, certificates: readonly SignerCertificate[]): Promise<string | undefined> | string | undefined =>
    inFlight > 1 ? verifySignedPartAsync(parts, certificates) : verifySignedPart(parts, certificates);
  return {
    async inspect(name: string, bytes: Buffer): Promise<Inspection> {
      inFlight++;
      try {
        return await inspectReport(options, skipEventTypes, nodes, verifySignature, name, bytes);
      } catch (error) {
        // a node's certificate that cannot be read now is no verdict on the report: thrown, so the queue
        // retries it (as the threaded inspector's planInspection does), never a permanent failure
        if (isRelayError(error) && error.code === 'RELAY_ERR_NODES_CERTS') throw error;
        // otherwise inspect never throws: an unexpected failure is reported as the file being unreadable
        const message = error instanceof Error ? error.message : String(error);
        return reject('undecodable', parseRunInfo(name)?.nodeId, `unexpected error while inspecting ${name}: ${message}`);
      } finally {
        inFlight--;
      }
    },
  };
}

function reject(reason: RejectReason, nodeId: string | undefined, message: string): Inspection {
  return { kind: 'reject', reason, nodeId, message };
}

/** What the main thread settles from the name alone (nodes registry, verify mode) before the bytes are looked at. */
export type InspectionPlan =
  | { readonly kind: 'inspect'; readonly info: RunInfo; readonly certificates: readonly SignerCertificate[] | undefined }
  | (Inspection & { readonly kind: 'reject' });

export function planInspection(options: ReportInspectorOptions, nodes: NodesRegistry, name: string): InspectionPlan {
  const info = parseRunInfo(name);
  if (info === undefined) {
    return {
      kind: 'reject',
      reason: 'bad-name',
      nodeId: undefined,
      message: `file name "${name}" carries no run info; expected <timestamp>@<node id>.log[.gz] or <node id>_<timestamp>.log[.gz]`,
    };
  }
  const nodeId = info.nodeId;
  const node = nodes.get(nodeId);
  // the relay's own run log (issue 18): its id is not in its own nodes list; its certificate is at hand
  if (node === undefined && nodeId === options.myId && options.ownCertificate !== undefined) {
    return { kind: 'inspect', info, certificates: options.verifyMode === 'off' ? undefined : [options.ownCertificate] };
  }
  if (node === undefined) return { kind: 'reject', reason: 'unknown-node', nodeId, message: `report from "${nodeId}", a node id absent from the nodes list` };

  // which certificates, if any, the signature is checked with
  let certificates: readonly SignerCertificate[] | undefined;
  if (options.verifyMode !== 'off') {
    const known = nodes.signerCertificatesOf(nodeId);
    if (options.verifyMode === 'required') {
      if (known.length === 0) {
        return {
          kind: 'reject',
          reason: 'unverifiable',
          nodeId,
          message: `no certificate known here for node "${nodeId}", and verify_signature = "required"; expected its certificate in the nodes certificates file`,
        };
      }
      certificates = known;
    } else if (node.policyServer === options.myId && known.length > 0) {
      // direct: deeper nodes were verified by their own relay, pre-9.0 roots list only some certificates
      certificates = known;
    }
  }
  return { kind: 'inspect', info, certificates };
}

export type SignatureVerifier = (parts: SmimeParts, certificates: readonly SignerCertificate[]) => Promise<string | undefined> | string | undefined;

async function inspectReport(
  options: ReportInspectorOptions,
  skipEventTypes: ReadonlySet<string>,
  nodes: NodesRegistry,
  verifySignature: SignatureVerifier,
  name: string,
  bytes: Buffer,
): Promise<Inspection> {
  const plan = planInspection(options, nodes, name);
  if (plan.kind === 'reject') return reject(plan.reason, plan.nodeId, plan.message);
  return inspectContent(options, skipEventTypes, plan.info, plan.certificates, verifySignature, name, bytes);
}

/** The part of an inspection that needs only the bytes (decode, S/MIME, run log): no registry, so it also runs in an inspection thread. */
export async function inspectContent(
  options: Pick<ReportInspectorOptions, 'maxDecodedBytes'>,
  skipEventTypes: ReadonlySet<string>,
  info: RunInfo,
  certificates: readonly SignerCertificate[] | undefined,
  verifySignature: SignatureVerifier,
  name: string,
  bytes: Buffer,
): Promise<Inspection> {
  const nodeId = info.nodeId;
  let decoded: Buffer;
  try {
    decoded = decodeReport(name, bytes, options.maxDecodedBytes);
  } catch (error) {
    if (isReportError(error)) return reject(error.reason, nodeId, error.message);
    throw error;
  }

  const smime = readSmime(decoded);
  let content: Buffer;
  if (smime.kind === 'smime') {
    if (certificates !== undefined) {
      const failure = await verifySignature(smime.parts, certificates);
      if (failure !== undefined) return reject('bad-signature', nodeId, `S/MIME signature of node "${nodeId}" refused: ${failure}`);
    }
    const text = stripTextHeader(smime.parts.signedPart);
    if (typeof text === 'string') return reject('invalid-runlog', nodeId, text);
    content = text;
  } else if (smime.kind === 'malformed') {
    return reject('undecodable', nodeId, `not a readable S/MIME run log: ${smime.reason}`);
  } else if (certificates !== undefined) {
    return reject(
      'undecodable',
      nodeId,
      `run log of node "${nodeId}" is not S/MIME signed; expected the output of openssl smime -sign -text (a signature is checked for this node)`,
    );
  } else {
    content = decoded; // unsigned plain text, acceptable when nothing is verified here
  }

  let summary: RunlogSummary;
  try {
    summary = checkRunlog(content.toString('utf8'), info, skipEventTypes);
  } catch (error) {
    if (isReportError(error)) return reject(error.reason, nodeId, error.message);
    throw error;
  }
  if (summary.allSkipped) {
    return reject('skipped', nodeId, `every report is of a skipped event type (${[...skipEventTypes].join(', ')})`);
  }
  return { kind: 'forward', nodeId, verified: certificates !== undefined, reports: summary.reports, decodedBytes: decoded.length };
}
