// Decompression of an uploaded run log by its extension (spec-relayd.md §7.4), bounded against bombs.
// gzip: the first member only, trailing bytes ignored (as flate2's GzDecoder); zip: the first entry of the
// central directory (as the zip crate's by_index(0)); anything else: the bytes as they are.

import { constants as zlibConstants, crc32, inflateRawSync } from 'node:zlib';
import { ReportError } from './report-error.js';

export function decodeReport(name: string, bytes: Buffer, maxDecodedBytes: number): Buffer {
  const dot = name.lastIndexOf('.');
  const extension = dot < 0 ? '' : name.slice(dot + 1);
  if (extension === 'gz') return gunzipFirstMember(bytes, maxDecodedBytes);
  if (extension === 'zip') return unzipFirstEntry(bytes, maxDecodedBytes);
  if (bytes.length > maxDecodedBytes) {
    throw new ReportError('too-large', `run log is ${bytes.length} bytes, more than the ${maxDecodedBytes} bytes allowed`);
  }
  return bytes;
}

// ---------------------------------------------------------------------------------------------------------
// gzip (RFC 1952)

const FHCRC = 0x02;
const FEXTRA = 0x04;
const FNAME = 0x08;
const FCOMMENT = 0x10;

function gunzipFirstMember(gz: Buffer, maxDecodedBytes: number): Buffer {
  const corrupt = (what: string): ReportError =>
    new ReportError('undecodable', `not a valid gzip file (${what}); expected a file made by gzip`);
  if (gz.length < 18 || gz[0] !== 0x1f || gz[1] !== 0x8b) throw corrupt('no gzip magic number');
  if (gz[2] !== 8) throw corrupt(`compression method ${gz[2]}, only deflate (8) exists`);
  const flags = gz[3] ?? 0;
  let at = 10;
  if (flags & FEXTRA) {
    if (at + 2 > gz.length) throw corrupt('truncated header');
    at += 2 + gz.readUInt16LE(at);
  }
  if (flags & FNAME) at = afterZeroByte(gz, at);
  if (flags & FCOMMENT) at = afterZeroByte(gz, at);
  if (flags & FHCRC) at += 2;
  if (at < 0 || at > gz.length) throw corrupt('truncated header');

  // the last trailer's ISIZE: the decoded size of a one-member file (every gzip an agent makes), a hint only
  const { buffer: decoded, consumed } = inflateBounded(gz.subarray(at), maxDecodedBytes, 'gzip', gz.readUInt32LE(gz.length - 4));
  const trailer = at + consumed;
  if (trailer + 8 > gz.length) throw corrupt('truncated: the CRC and size trailer is missing');
  if (gz.readUInt32LE(trailer) !== crc32(decoded)) throw corrupt('CRC mismatch: the content is damaged');
  if (gz.readUInt32LE(trailer + 4) !== decoded.length % 2 ** 32) throw corrupt('size mismatch in the trailer');
  return decoded;
}

function afterZeroByte(buffer: Buffer, from: number): number {
  if (from < 0) return -1;
  const zero = buffer.indexOf(0, from);
  return zero < 0 ? -1 : zero + 1;
}

/**
 * zlib's output buffer for a decoded size announced by the container (a hint, anyone's to write): one byte more
 * than the size, so that the whole output fits one buffer and inflate ends in one call. With its default 16 KiB
 * chunks, a run log of ~17 KB took two inflate calls, a 32 KiB window allocated for the second one and a
 * concatenation of both chunks (~6 of its ~26 µs per report, bench/pipeline's files). Never smaller than
 * zlib's default chunk: an announced 0 would otherwise make 64-byte chunks, a million Buffers for a 64 MiB run
 * log (~0.6 s and ~130 MB of heap instead of ~0.1 s); never larger than the bound or MAX_HINTED_CHUNK up front.
 */
function chunkSizeFor(announced: number | undefined, maxDecodedBytes: number): number | undefined {
  if (announced === undefined) return undefined;
  return Math.max(zlibConstants.Z_DEFAULT_CHUNK, Math.min(announced + 1, maxDecodedBytes + 1, MAX_HINTED_CHUNK));
}
const MAX_HINTED_CHUNK = 1024 * 1024;

function inflateBounded(
  deflated: Buffer,
  maxDecodedBytes: number,
  container: string,
  announcedSize?: number,
): { buffer: Buffer; consumed: number } {
  try {
    // maxOutputLength makes zlib stop as soon as the output would grow past the bound (no full allocation)
    const result = inflateRawSync(deflated, {
      info: true,
      maxOutputLength: Math.max(1, maxDecodedBytes),
      chunkSize: chunkSizeFor(announcedSize, maxDecodedBytes),
    }) as unknown as {
      buffer: Buffer;
      engine: { bytesWritten: number };
    };
    return { buffer: result.buffer, consumed: result.engine.bytesWritten };
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'ERR_BUFFER_TOO_LARGE') {
      throw new ReportError(
        'too-large',
        `${container} content decompresses to more than the ${maxDecodedBytes} bytes allowed (compression bomb?)`,
        { cause: error },
      );
    }
    const detail = error instanceof Error ? error.message : String(error);
    throw new ReportError('undecodable', `${container} content cannot be inflated (${detail}); the file is truncated or damaged`, {
      cause: error,
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// zip (APPNOTE.TXT): end of central directory → first central directory entry → its local header → data

const EOCD_SIGNATURE = 0x06054b50;
const CENTRAL_SIGNATURE = 0x02014b50;
const LOCAL_SIGNATURE = 0x04034b50;
const EOCD_SIZE = 22;
const ZIP64_EXTRA = 0x0001;
const STORED = 0;
const DEFLATED = 8;

function unzipFirstEntry(zip: Buffer, maxDecodedBytes: number): Buffer {
  const corrupt = (what: string): ReportError =>
    new ReportError('undecodable', `not a valid zip archive (${what}); expected a zip with the run log as first entry`);

  // the EOCD is the last 22 bytes, unless followed by an archive comment of at most 65535 bytes
  let eocd = -1;
  for (let at = zip.length - EOCD_SIZE; at >= 0 && at >= zip.length - EOCD_SIZE - 0xffff; at--) {
    if (zip.readUInt32LE(at) === EOCD_SIGNATURE && at + EOCD_SIZE + zip.readUInt16LE(at + 20) === zip.length) {
      eocd = at;
      break;
    }
  }
  if (eocd < 0) throw corrupt('no end of central directory record');
  const entries = zip.readUInt16LE(eocd + 10);
  const centralOffset = zip.readUInt32LE(eocd + 16);
  if (entries === 0xffff || centralOffset === 0xffffffff) throw corrupt('zip64 archives are not supported');
  if (entries === 0) throw corrupt('the archive is empty');

  const central = centralOffset;
  if (central + 46 > zip.length || zip.readUInt32LE(central) !== CENTRAL_SIGNATURE) {
    throw corrupt('bad central directory offset');
  }
  const flags = zip.readUInt16LE(central + 8);
  const method = zip.readUInt16LE(central + 10);
  const expectedCrc = zip.readUInt32LE(central + 16);
  let compressedSize = zip.readUInt32LE(central + 20);
  let uncompressedSize = zip.readUInt32LE(central + 24);
  const nameLength = zip.readUInt16LE(central + 28);
  const extraLength = zip.readUInt16LE(central + 30);
  let localOffset = zip.readUInt32LE(central + 42);
  const extraStart = central + 46 + nameLength;
  if (extraStart + extraLength > zip.length) throw corrupt('truncated central directory');

  // zip64 extra field: 64-bit values present only for the 32-bit fields saturated at 0xffffffff (streamed zips)
  if (compressedSize === 0xffffffff || uncompressedSize === 0xffffffff || localOffset === 0xffffffff) {
    let at = extraStart;
    let found = false;
    while (at + 4 <= extraStart + extraLength) {
      const id = zip.readUInt16LE(at);
      const size = zip.readUInt16LE(at + 2);
      if (id === ZIP64_EXTRA) {
        let field = at + 4;
        const next = (): number => {
          if (field + 8 > at + 4 + size) throw corrupt('truncated zip64 extra field');
          const value = Number(zip.readBigUInt64LE(field));
          field += 8;
          return value;
        };
        if (uncompressedSize === 0xffffffff) uncompressedSize = next();
        if (compressedSize === 0xffffffff) compressedSize = next();
        if (localOffset === 0xffffffff) localOffset = next();
        found = true;
        break;
      }
      at += 4 + size;
    }
    if (!found) throw corrupt('saturated sizes without zip64 extra field');
  }

  if (flags & 0x0001) throw corrupt('the entry is encrypted');
  if (localOffset + 30 > zip.length || zip.readUInt32LE(localOffset) !== LOCAL_SIGNATURE) {
    throw corrupt('bad local header offset');
  }
  const dataStart = localOffset + 30 + zip.readUInt16LE(localOffset + 26) + zip.readUInt16LE(localOffset + 28);
  if (dataStart + compressedSize > zip.length) throw corrupt('the entry is truncated');
  const data = zip.subarray(dataStart, dataStart + compressedSize);

  let decoded: Buffer;
  if (method === STORED) {
    if (compressedSize > maxDecodedBytes) {
      throw new ReportError('too-large', `zip entry is ${compressedSize} bytes, more than the ${maxDecodedBytes} bytes allowed`);
    }
    decoded = data;
  } else if (method === DEFLATED) {
    decoded = inflateBounded(data, maxDecodedBytes, 'zip entry', uncompressedSize).buffer;
  } else {
    throw corrupt(`compression method ${method}; only stored (0) and deflated (8) are supported`);
  }
  if (decoded.length !== uncompressedSize) throw corrupt('the entry size does not match the central directory');
  if (crc32(decoded) !== expectedCrc) throw corrupt('CRC mismatch: the entry is damaged');
  return decoded;
}
