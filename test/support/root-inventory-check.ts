// What a Rudder root does with an uploaded inventory before it shows a pending node, written from its
// sources (spec-agentless-node.md §A.1–A.6, checked in Normation/rudder ef661941d9): gunzip; the .sign
// (ParseInventoryDigestFileV1: header, algorithm sha512, hex digest) verified with the public key of the
// received AGENT_CERT by `openssl dgst -sha512 -verify` (as Signature SHA512withRSA would); then
// PreInventoryParserCheckConsistency (UUID, OWNER, POLICY_SERVER_UUID, OS, KERNEL_VERSION, AGENT_NAME,
// AGENT_CERT), PreInventoryParserCheckInventoryAge (LOGDATE + OFFSET within -2 days / +12 hours),
// FusionInventoryParser (DEVICEID, hostname, exactly one RUDDER, a parseable AGENT) and the certificate
// subject check (UID = node id). Independent of onerelay's code on purpose.

import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { gunzipSync } from 'node:zlib';

const run = promisify(execFile);

export interface XmlElement {
  readonly name: string;
  readonly children: XmlElement[];
  text: string;
}

const ENTITIES: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

function decodeEntities(text: string): string {
  return text.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|[a-z]+);/g, (whole, entity: string) => {
    if (entity.startsWith('#x')) return String.fromCodePoint(parseInt(entity.slice(2), 16));
    if (entity.startsWith('#')) return String.fromCodePoint(parseInt(entity.slice(1), 10));
    return ENTITIES[entity] ?? whole;
  });
}

/** a small XML reader: elements, text, entities, CDATA, comments; attributes are skipped (the root does not read any here) */
export function parseXml(source: string): XmlElement {
  const root: XmlElement = { name: '#document', children: [], text: '' };
  const stack: XmlElement[] = [root];
  let i = 0;
  while (i < source.length) {
    const lt = source.indexOf('<', i);
    const top = stack[stack.length - 1]!;
    if (lt < 0) {
      top.text += decodeEntities(source.slice(i));
      break;
    }
    if (lt > i) top.text += decodeEntities(source.slice(i, lt));
    if (source.startsWith('<?', lt)) i = source.indexOf('?>', lt) + 2;
    else if (source.startsWith('<!--', lt)) i = source.indexOf('-->', lt) + 3;
    else if (source.startsWith('<![CDATA[', lt)) {
      const end = source.indexOf(']]>', lt);
      top.text += source.slice(lt + 9, end);
      i = end + 3;
    } else if (source.startsWith('</', lt)) {
      const end = source.indexOf('>', lt);
      const name = source.slice(lt + 2, end).trim();
      const closing = stack.pop();
      if (closing?.name !== name) throw new Error(`XML: </${name}> closes <${closing?.name ?? '?'}>`);
      i = end + 1;
    } else {
      const end = source.indexOf('>', lt);
      if (end < 0) throw new Error('XML: unterminated tag');
      const inside = source.slice(lt + 1, end);
      const selfClosing = inside.endsWith('/');
      const name = (inside.replace(/\/$/, '').trim().split(/\s+/)[0] ?? '').trim();
      const element: XmlElement = { name, children: [], text: '' };
      top.children.push(element);
      if (!selfClosing) stack.push(element);
      i = end + 1;
    }
    if (i <= 0) throw new Error('XML: unterminated construct');
  }
  if (stack.length !== 1) throw new Error(`XML: <${stack[stack.length - 1]!.name}> is not closed`);
  return root;
}

/** Scala's `\\` (self and every descendant) */
function descendants(nodes: readonly XmlElement[], name: string): XmlElement[] {
  const found: XmlElement[] = [];
  const walk = (e: XmlElement) => {
    if (e.name === name) found.push(e);
    for (const c of e.children) walk(c);
  };
  for (const n of nodes) walk(n);
  return found;
}

/** Scala's `\` (direct children) */
function children(nodes: readonly XmlElement[], name: string): XmlElement[] {
  return nodes.flatMap((n) => n.children.filter((c) => c.name === name));
}

/** the whole text of an element, its children's included (scala.xml `.text`) */
function fullText(e: XmlElement): string {
  return e.text + e.children.map(fullText).join('');
}

/** OptText.optText: trimmed, blanks squeezed, empty = none */
function optText(nodes: readonly XmlElement[]): string | undefined {
  const text = nodes.map(fullText).join('').trim().replace(/[ \t]+/g, ' ');
  return text === '' ? undefined : text;
}

/** checkWithinNodeSeq / checkNodeSeq: the first match's text must be non-empty */
function headText(nodes: readonly XmlElement[]): string | undefined {
  const head = nodes[0];
  if (head === undefined) return undefined;
  const text = fullText(head);
  return text === '' ? undefined : text;
}

const NODE_ID = /^[a-zA-Z0-9][a-zA-Z0-9-]{0,49}$/;
const HOSTNAME = /^[a-zA-Z0-9][a-zA-Z0-9_\-.]*$/;
const UID_OID_LABELS = ['UID', '0.9.2342.19200300.100.1.1'];

function parseLogDate(value: string): Date | undefined {
  const m = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})([+-]\d{4})?$/.exec(value);
  if (m === null) return undefined;
  const offset = m[7] ?? '+0000';
  const iso = `${m[1]}-${m[2]}-${m[3]}T${m[4]}:${m[5]}:${m[6]}${offset.slice(0, 3)}:${offset.slice(3)}`;
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/** java.util.Properties, the subset a .sign file uses */
function parseProperties(text: string): Record<string, string> {
  const values: Record<string, string> = {};
  for (const line of text.split(/\r?\n/)) {
    const trimmed = line.replace(/^\s+/, '');
    if (trimmed === '' || trimmed.startsWith('#') || trimmed.startsWith('!')) continue;
    const m = /^([^=:\s]+)\s*[=:\s]\s*(.*)$/.exec(trimmed);
    if (m?.[1] !== undefined) values[m[1]] = m[2] ?? '';
  }
  return values;
}

export interface RootCheckResult {
  /** every reason the root would refuse the inventory; empty when it accepts it as a (pending) node */
  readonly problems: string[];
  readonly nodeId: string | undefined;
  readonly policyServerId: string | undefined;
  readonly hostname: string | undefined;
  readonly agentName: string | undefined;
  readonly agentVersion: string | undefined;
  readonly logDate: Date | undefined;
  readonly document: XmlElement | undefined;
}

export interface RootCheckInput {
  /** the uploaded inventory (`.ocs.gz` is gunzipped like the root's watcher does) */
  readonly inventory: Buffer;
  readonly inventoryName: string;
  readonly signature: Buffer | undefined;
  readonly signatureName: string | undefined;
  readonly now?: Date;
  /**
   * which parser reads the agent version: `8.3.2` and later take RUDDER/AGENT_VERSION, else a package (rudder
   * 35c9f52035); `8.2` (8.2.x, 8.3.0, 8.3.1) and `8.1` read a package only. Default: the latest.
   */
  readonly rudder?: '8.1' | '8.2' | 'latest';
}

/**
 * The agent version a root before 8.3.2 finds among the SOFTWARES (AgentTypes CfeCommunity
 * inventorySoftwareName "rudder-agent", lower-cased `contains` on NAME). 8.1 (`findAgent`) takes the first such
 * package and then its VERSION, so a match without VERSION hides a later one; 8.2 to 8.3.1
 * (`findAgentVersion`) keep the matches that have a VERSION and take the first. No format is checked: any
 * non-blank VERSION (OptText) is the version.
 */
export function agentVersionFromSoftware(top: readonly XmlElement[], rule: '8.1' | '8.2'): string | undefined {
  const matches = descendants(top, 'SOFTWARES').filter((s) => optText(children([s], 'NAME'))?.toLowerCase().includes('rudder-agent'));
  if (rule === '8.1') return matches.length === 0 ? undefined : optText(children([matches[0]!], 'VERSION'));
  return matches.map((s) => optText(children([s], 'VERSION'))).find((v) => v !== undefined);
}

export async function checkInventoryAsRoot(input: RootCheckInput): Promise<RootCheckResult> {
  const problems: string[] = [];
  const now = input.now ?? new Date();
  const ocsName = input.inventoryName.replace(/\.gz$/, '');
  let bytes = input.inventory;
  if (input.inventoryName.endsWith('.gz')) {
    try {
      bytes = gunzipSync(input.inventory);
    } catch (error) {
      problems.push(`corrupt gzip: ${(error as Error).message}`);
      return { problems, nodeId: undefined, policyServerId: undefined, hostname: undefined, agentName: undefined, agentVersion: undefined, logDate: undefined, document: undefined };
    }
  }
  // InventoryFileWatcher: `X.ocs` pairs with `X.ocs.sign`, never `X.ocs.gz.sign`
  if (input.signatureName === undefined || input.signature === undefined) problems.push('no signature: the root waits, then deletes the file');
  else if (input.signatureName !== `${ocsName}.sign`) problems.push(`signature ${input.signatureName} does not pair with ${ocsName} (expected ${ocsName}.sign)`);

  let doc: XmlElement;
  try {
    doc = parseXml(bytes.toString('utf8'));
  } catch (error) {
    problems.push(`not XML: ${(error as Error).message}`);
    return { problems, nodeId: undefined, policyServerId: undefined, hostname: undefined, agentName: undefined, agentVersion: undefined, logDate: undefined, document: undefined };
  }
  const top = [doc];
  const request = children(top, 'REQUEST');
  if (request.length !== 1) problems.push('the document element is not REQUEST');
  const agents = descendants(top, 'AGENT');
  const rudders = descendants(top, 'RUDDER');

  // 1. checkId
  const uuid = headText(children(rudders, 'UUID')) ?? headText(children(request, 'UUID'));
  if (uuid === undefined) problems.push('checkId: missing RUDDER/UUID');
  else if (!NODE_ID.test(uuid)) problems.push(`checkId: node id ${uuid} does not match NodeIdRegex`);
  // 2. checkRoot
  if (headText(children(agents, 'OWNER')) === undefined && headText(descendants(top, 'USER')) === undefined) problems.push('checkRoot: missing AGENT/OWNER');
  // 3. checkPolicyServer
  const policyServerId = headText(children(agents, 'POLICY_SERVER_UUID')) ?? headText(descendants(top, 'POLICY_SERVER'));
  if (policyServerId === undefined) problems.push('checkPolicyServer: missing AGENT/POLICY_SERVER_UUID');
  // 4. checkOS
  const os = descendants(top, 'OPERATINGSYSTEM');
  if (!['FULL_NAME', 'KERNEL_NAME', 'NAME'].some((tag) => headText(children(os, tag)) !== undefined)) problems.push('checkOS: none of OPERATINGSYSTEM/FULL_NAME, KERNEL_NAME, NAME');
  // 5. checkKernelVersion
  if (headText(children(os, 'KERNEL_VERSION')) === undefined) {
    const isAix = headText(children(os, 'KERNEL_NAME'))?.toLowerCase() === 'aix';
    if (!isAix || headText(children(descendants(top, 'HARDWARE'), 'OSVERSION')) === undefined) problems.push('checkKernelVersion: missing OPERATINGSYSTEM/KERNEL_VERSION');
  }
  // 6. checkAgentType
  const agentName = headText(children(agents, 'AGENT_NAME')) ?? headText(descendants(top, 'AGENTNAME'));
  if (agentName === undefined) problems.push('checkAgentType: missing AGENT/AGENT_NAME');
  // 7. checkSecurityToken
  if (headText(children(agents, 'AGENT_CERT')) === undefined) problems.push('checkSecurityToken: missing RUDDER/AGENT/AGENT_CERT');

  // 9. PreInventoryParserCheckInventoryAge
  const logDateText = (optText(children(descendants(top, 'ACCESSLOG'), 'LOGDATE')) ?? '') + (optText(children(children(os, 'TIMEZONE'), 'OFFSET')) ?? '');
  const logDate = parseLogDate(logDateText);
  if (logDate === undefined) problems.push(`inventory age: LOGDATE ${JSON.stringify(logDateText)} is missing or not yyyy-MM-dd HH:mm:ss[Z]`);
  else if (logDate.getTime() < now.getTime() - 2 * 86_400_000) problems.push(`inventory age: ${logDateText} is more than 2 days old`);
  else if (logDate.getTime() > now.getTime() + 12 * 3_600_000) problems.push(`inventory age: ${logDateText} is more than 12 hours in the future`);

  // FusionInventoryParser.fromXmlDoc: hostname, DEVICEID
  const hostnames = [optText(children(rudders, 'HOSTNAME').slice(0, 1)), optText(children(os, 'FQDN').slice(0, 1))];
  const hostname = hostnames.find((h) => h !== undefined && HOSTNAME.test(h) && !['localhost', '127.0.0.1', '::1'].includes(h));
  if (hostname === undefined) problems.push(`getHostname: no valid RUDDER/HOSTNAME or OPERATINGSYSTEM/FQDN (${hostnames.join(', ')})`);
  if (optText(children(doc.children, 'DEVICEID')) === undefined) problems.push('fromXmlDoc: no DEVICEID under REQUEST');
  // 10. exactly one RUDDER
  if (rudders.length !== 1) problems.push(`processRudderElement: ${rudders.length} <RUDDER> tags, exactly one expected`);
  // 11. the first parseable AGENT
  const rule = input.rudder ?? 'latest';
  const agentVersion = rule === 'latest' ? (optText(children(rudders, 'AGENT_VERSION')) ?? agentVersionFromSoftware(top, '8.2')) : agentVersionFromSoftware(top, rule);
  const parseable = descendants(rudders, 'AGENT').find((a) => {
    const name = optText(children([a], 'AGENT_NAME'))?.toLowerCase();
    return (
      name !== undefined &&
      ['cfengine-community', 'community', 'dsc'].includes(name) &&
      optText(descendants([a], 'OWNER')) !== undefined &&
      optText(descendants([a], 'POLICY_SERVER_UUID')) !== undefined &&
      optText(children([a], 'AGENT_CERT')) !== undefined &&
      agentVersion !== undefined
    );
  });
  if (parseable === undefined) problems.push('processAgentList: no <AGENT> with a known AGENT_NAME, OWNER, POLICY_SERVER_UUID, AGENT_CERT and an agent version');
  if (optText(children(rudders, 'UUID')) === undefined) problems.push('processRudderElement: no RUDDER/UUID');

  // 12. the certificate: X.509, subject UID = node id; then the signature with its public key
  const certificateText = parseable === undefined ? undefined : optText(children([parseable], 'AGENT_CERT'));
  let certificate: X509Certificate | undefined;
  if (certificateText !== undefined) {
    try {
      certificate = new X509Certificate(certificateText);
    } catch (error) {
      problems.push(`parseCertificate: AGENT_CERT is not an X.509 certificate: ${(error as Error).message}`);
    }
  }
  if (certificate !== undefined) {
    const uid = certificate.subject
      .split('\n')
      .map((line) => line.split('='))
      .find(([key]) => UID_OID_LABELS.includes((key ?? '').trim()))?.[1];
    if (uid === undefined) problems.push(`checkCertificateSubject: no UID in ${certificate.subject}`);
    else if (uuid !== undefined && uid.trim().toLowerCase() !== uuid.toLowerCase()) problems.push(`checkCertificateSubject: UID=${uid} is not the node id ${uuid}`);
  }
  if (input.signature !== undefined && certificate !== undefined) problems.push(...(await verifySignature(bytes, input.signature, certificate)));

  return { problems, nodeId: uuid, policyServerId, hostname, agentName, agentVersion, logDate, document: doc };
}

/** ParseInventoryDigestFileV1 + CheckInventoryDigest.check, with openssl as the verifier */
async function verifySignature(inventory: Buffer, signatureFile: Buffer, certificate: X509Certificate): Promise<string[]> {
  const properties = parseProperties(signatureFile.toString('latin1'));
  const problems: string[] = [];
  if (properties['header']?.trim().toLowerCase() !== 'rudder-signature-v1') problems.push(`.sign: header is ${JSON.stringify(properties['header'])}, not rudder-signature-v1`);
  if (properties['algorithm']?.trim().toLowerCase() !== 'sha512') problems.push(`.sign: algorithm is ${JSON.stringify(properties['algorithm'])}, only sha512 is accepted`);
  const digest = properties['digest']?.trim();
  if (digest === undefined || !/^([0-9a-fA-F]{2})+$/.test(digest)) problems.push('.sign: digest is missing or not hex');
  if (problems.length > 0 || digest === undefined) return problems;
  const dir = await mkdtemp(join(tmpdir(), 'root-check-'));
  try {
    await writeFile(join(dir, 'inventory.ocs'), inventory);
    await writeFile(join(dir, 'signature.bin'), Buffer.from(digest, 'hex'));
    await writeFile(join(dir, 'agent.cert'), certificate.toString());
    const { stdout: publicKey } = await run('openssl', ['x509', '-pubkey', '-noout', '-in', join(dir, 'agent.cert')]);
    await writeFile(join(dir, 'public.pem'), publicKey);
    try {
      await run('openssl', ['dgst', '-sha512', '-verify', join(dir, 'public.pem'), '-signature', join(dir, 'signature.bin'), join(dir, 'inventory.ocs')]);
    } catch (error) {
      const e = error as { stdout?: string; stderr?: string };
      problems.push(`signature: openssl dgst -sha512 -verify refused it (SignatureInvalid): ${(e.stdout ?? '').trim()} ${(e.stderr ?? '').trim()}`.trim());
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return problems;
}

/** the text of the first element at a path of names (e.g. ['REQUEST', 'CONTENT', 'RUDDER', 'UUID']) */
export function textAt(doc: XmlElement, path: readonly string[]): string | undefined {
  let nodes: XmlElement[] = [doc];
  for (const name of path) nodes = children(nodes, name);
  return optText(nodes.slice(0, 1));
}
