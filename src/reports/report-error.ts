// Why a run log file cannot be forwarded or stored: carries the Inspection reason it maps to.

import type { RejectReason } from './index.js';

export class ReportError extends Error {
  readonly reason: RejectReason;

  constructor(reason: RejectReason, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ReportError';
    this.reason = reason;
  }
}

export function isReportError(error: unknown): error is ReportError {
  return error instanceof ReportError;
}
