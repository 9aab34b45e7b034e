// Why a run log file cannot be forwarded or stored: carries the Inspection reason it maps to.

import { RelayError, type ErrorCode } from '../errors.js';
import type { RejectReason } from './index.js';

const CODE_OF_REASON: Record<RejectReason, ErrorCode> = {
  'bad-name': 'RELAY_ERR_REPORT_REJECTED',
  'unknown-node': 'RELAY_ERR_REPORT_REJECTED',
  undecodable: 'RELAY_ERR_REPORT_UNDECODABLE',
  'too-large': 'RELAY_ERR_REPORT_TOO_LARGE',
  'bad-signature': 'RELAY_ERR_REPORT_SIGNATURE',
  unverifiable: 'RELAY_ERR_REPORT_SIGNATURE',
  'invalid-runlog': 'RELAY_ERR_REPORT_INVALID',
  skipped: 'RELAY_ERR_REPORT_REJECTED',
};

export class ReportError extends RelayError {
  readonly reason: RejectReason;

  constructor(reason: RejectReason, message: string, options?: { cause?: unknown }) {
    super(CODE_OF_REASON[reason], message, options);
    this.name = 'ReportError';
    this.reason = reason;
  }
}

export function isReportError(error: unknown): error is ReportError {
  return error instanceof ReportError;
}
