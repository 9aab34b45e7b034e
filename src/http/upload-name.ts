// File names of WebDAV uploads: curl percent-encodes them (`@` as %40, `+` as %2B); Apache decodes
// and mod_dav refuses anything that could leave the collection. We refuse more, never less.

import { RelayError } from '../errors.js';

const MAX_NAME_BYTES = 255;

export function decodeUploadName(encoded: string): string {
  let name: string;
  try {
    name = decodeURIComponent(encoded);
  } catch {
    throw new RelayError('RELAY_ERR_UPLOAD_NAME', 'file name is not valid percent-encoded UTF-8');
  }
  if (name === '') throw new RelayError('RELAY_ERR_UPLOAD_NAME', 'file name is empty: PUT to /<endpoint>/<file name>');
  if (name.includes('/') || name.includes('\\')) {
    throw new RelayError('RELAY_ERR_UPLOAD_NAME', 'file name must not contain "/" or "\\"');
  }
  if (name.startsWith('.')) {
    throw new RelayError('RELAY_ERR_UPLOAD_NAME', 'file name must not start with "." (no ".", ".." or hidden files)');
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    throw new RelayError('RELAY_ERR_UPLOAD_NAME', 'file name must not contain NUL or control characters');
  }
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) {
    throw new RelayError('RELAY_ERR_UPLOAD_NAME', `file name longer than ${MAX_NAME_BYTES} bytes`);
  }
  return name;
}
