// Atomic creation of identity files: temp file in the same directory, fsync, link into place (link
// fails if the name exists, so an existing file is never overwritten, even in a race), fsync the directory.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** true when the file was created, false when it already existed (then it is left untouched). */
export async function createFileAtomically(file: string, content: string, mode: number): Promise<boolean> {
  const dir = path.dirname(file);
  const temp = path.join(dir, `.${path.basename(file)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await fs.open(temp, 'wx', mode);
  try {
    await handle.chmod(mode); // open's mode is filtered by the umask
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  let created: boolean;
  try {
    await fs.link(temp, file);
    created = true;
  } catch (error) {
    if (codeOf(error) === 'EEXIST') {
      created = false;
    } else if (codeOf(error) === 'EPERM' || codeOf(error) === 'ENOTSUP' || codeOf(error) === 'EXDEV') {
      // file systems without hard links: check then rename (tiny race, acceptable at init time)
      created = !(await exists(file));
      if (created) {
        await fs.rename(temp, file);
      }
    } else {
      await fs.rm(temp, { force: true });
      throw error;
    }
  }
  await fs.rm(temp, { force: true });
  if (created) await syncDirectory(dir);
  return created;
}

export async function ensureDirectory(dir: string, mode: number): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode });
}

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (error) {
    if (codeOf(error) === 'ENOENT') return false;
    throw error;
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

export function codeOf(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}
