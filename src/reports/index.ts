// Face of the reports module: the reports pipeline (spool queue → inspection → upstream, cleanup) and
// what it needs to decide about one run log file before it is forwarded unchanged (spec-relayd.md §7;
// issue 3 "Reports").

import type { X509Certificate } from 'node:crypto';
import type { NodesRegistry } from '../nodes/index.js';

export type VerifyMode = 'direct' | 'required' | 'off';

export interface ReportInspectorOptions {
  /** this relay's node id */
  readonly myId: string;
  /** this relay's certificate: its own run logs (not in its own nodes list) are verified with it */
  readonly ownCertificate?: X509Certificate;
  /** processing.reporting.verify_signature */
  readonly verifyMode: VerifyMode;
  /** processing.reporting.skip_event_types */
  readonly skipEventTypes: readonly string[];
  /** bound on decompressed size (zip/gzip bombs) */
  readonly maxDecodedBytes: number;
}

export type RejectReason =
  | 'bad-name' // no run info in the file name
  | 'unknown-node' // node id not in the nodes list
  | 'undecodable' // truncated/corrupt gzip or zip, not S/MIME
  | 'too-large' // decompresses beyond maxDecodedBytes
  | 'bad-signature' // S/MIME signature does not verify against the node's certificate(s)
  | 'unverifiable' // verify_signature = "required" and no certificate here to verify with
  | 'invalid-runlog' // no report line could be parsed, or inconsistent node id inside
  | 'skipped'; // every report is of a skip_event_types type

export type Inspection =
  | {
      readonly kind: 'forward';
      readonly nodeId: string;
      /** true when the S/MIME signature was verified here */
      readonly verified: boolean;
      /** number of report lines parsed */
      readonly reports: number;
      readonly decodedBytes: number;
    }
  | { readonly kind: 'reject'; readonly reason: RejectReason; readonly nodeId: string | undefined; readonly message: string };

export interface RunInfo {
  readonly nodeId: string;
  /** the timestamp as written in the name, ':' restored */
  readonly timestamp: string;
}

export interface ReportInspector {
  /**
   * bytes = the file as uploaded (maybe gz/zip); never throws for bad input, only returns reject. Throws
   * RelayError RELAY_ERR_NODES_CERTS when the node's certificates cannot be read now (the queue retries).
   */
  inspect(name: string, bytes: Buffer): Promise<Inspection>;
}

export { createReportsPipeline } from './pipeline.js';
export type { ReportsPipeline, ReportsPipelineOptions } from './pipeline.js';
export type { ReportCounters } from './queue-handler.js';
export { createReportInspector, parseRunInfo } from './inspect.js';
export { createInlineFileInspector, createThreadedFileInspector } from './inspect-pool.js';
export type { FileInspection, FileInspector } from './inspect-pool.js';
export { decodeReport } from './decode.js';
export { verifySmime } from './smime.js';
export { checkRunlog, parseRunlog } from './runlog.js';
export type { RunLog, Report, RunlogSummary } from './runlog.js';
export { ReportError, isReportError } from './report-error.js';
export type { SmimeVerification } from './smime.js';
export { parseReports } from './runlog.js';
export type { ParsedReports } from './runlog.js';
