// The probes of the relay's own run log: each looks at the real thing onerelay does in place of a
// component (an HTTPS answer, the local API answering, the last sync, files on disk), never at a flag.

import { X509Certificate } from 'node:crypto';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { RelayError, messageOf } from '../errors.js';
import type { OwnComplianceProbes } from './compliance.js';
import type { ComponentOutcome } from './types.js';

export interface ProbeTargets {
  /** the front door, e.g. https://127.0.0.1:443 (a wildcard listen address is reached on loopback) */
  readonly httpsUrl: string;
  /** the local API, e.g. http://127.0.0.1:3030 */
  readonly apiUrl: string;
  readonly privateKeyFile: string;
  readonly certificateFile: string;
  /** the parent's pinned certificate, when general.peer_authentication = "cert_pinning" */
  readonly pinnedCertificateFile: string | undefined;
}

export interface SyncView {
  readonly lastSuccessAt: string | undefined;
  readonly lastAttemptAt: string | undefined;
  readonly lastError: string | undefined;
}

const PROBE_TIMEOUT_MS = 10_000;

/** the loopback address that reaches a listener bound to `host` */
export function loopbackOf(host: string): string {
  if (host === '0.0.0.0' || host === '') return '127.0.0.1';
  if (host === '::') return '[::1]';
  return host.includes(':') && !host.startsWith('[') ? `[${host}]` : host;
}

/** resolves with the HTTP status of a GET; the front door presents the relay's own certificate, nothing to verify against */
function getStatus(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const https = url.startsWith('https:');
    const request = (https ? httpsRequest : httpRequest)(url, { method: 'GET', timeout: PROBE_TIMEOUT_MS, ...(https ? { rejectUnauthorized: false } : {}) }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    request.on('timeout', () => request.destroy(new RelayError('RELAY_ERR_OWN_RUNLOG', `no answer within ${PROBE_TIMEOUT_MS / 1000} s`)));
    request.on('error', reject);
    request.end();
  });
}

const outcome = (ok: boolean, message: string): ComponentOutcome => ({ ok, message, at: Date.now() });

export function createOwnComplianceProbes(targets: ProbeTargets, sync: (() => SyncView) | undefined): OwnComplianceProbes {
  return {
    sync() {
      if (sync === undefined) return undefined;
      const s = sync();
      if (s.lastError !== undefined) return { ok: false, message: `Synchronisation from upstream failed: ${s.lastError}`, at: Date.parse(s.lastAttemptAt ?? '') || Date.now() };
      if (s.lastSuccessAt !== undefined) return { ok: true, message: `Synchronised from upstream at ${s.lastSuccessAt}`, at: Date.parse(s.lastSuccessAt) };
      return 'pending';
    },
    async https() {
      try {
        // any HTTP answer means the endpoint serves (/uuid may be refused to loopback by allowed_networks)
        const status = await getStatus(`${targets.httpsUrl}/uuid`);
        return outcome(true, `HTTPS endpoint ${targets.httpsUrl} answering (HTTP ${status})`);
      } catch (error) {
        return outcome(false, `HTTPS endpoint ${targets.httpsUrl} not answering: ${messageOf(error)}`);
      }
    },
    async relayService() {
      try {
        const status = await getStatus(`${targets.apiUrl}/rudder/relay-api/1/system/info`);
        return outcome(status === 200, `Relay API ${targets.apiUrl} answered HTTP ${status}`);
      } catch (error) {
        return outcome(false, `Relay API ${targets.apiUrl} not answering: ${messageOf(error)}`);
      }
    },
    async upstreamCertificate() {
      const file = targets.pinnedCertificateFile;
      if (file === undefined) return undefined;
      try {
        const certificate = new X509Certificate(await readFile(file));
        return outcome(true, `Parent certificate ${file} pinned (${certificate.subject.replace(/\n/g, ', ')})`);
      } catch (error) {
        return outcome(false, `Parent certificate ${file} unusable: ${messageOf(error)}`);
      }
    },
    async security() {
      try {
        const key = await stat(targets.privateKeyFile);
        const folder = await stat(dirname(targets.privateKeyFile));
        await stat(targets.certificateFile);
        // onerelay's unit gives the key to the rudder group (README), never to others: not readable, or its folder not enterable
        if ((key.mode & 0o004) !== 0 && (folder.mode & 0o001) !== 0) {
          return outcome(false, `Private key ${targets.privateKeyFile} is readable by others (mode ${(key.mode & 0o777).toString(8)}, folder ${(folder.mode & 0o777).toString(8)})`);
        }
        return outcome(true, 'Key and certificate in place, private key not readable by others');
      } catch (error) {
        return outcome(false, `Key or certificate missing: ${messageOf(error)}`);
      }
    },
  };
}
