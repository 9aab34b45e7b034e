// Watch a few files through their parent directories (files are replaced by rename, so watching the
// file itself would lose track), debounce, and retry directories that do not exist yet.

import { watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { messageOf } from '../errors.js';

export interface FilesWatcher {
  close(): void;
}

export interface WatchOptions {
  readonly files: readonly string[];
  readonly debounceMs: number;
  /** how often a missing or failed directory is tried again */
  readonly retryMs: number;
  readonly onChange: () => void;
  readonly log: Logger;
}

export function watchFiles(options: WatchOptions): FilesWatcher {
  const namesByDirectory = new Map<string, Set<string>>();
  for (const file of options.files) {
    const directory = path.dirname(file);
    const names = namesByDirectory.get(directory) ?? new Set<string>();
    names.add(path.basename(file));
    namesByDirectory.set(directory, names);
  }

  const watchers = new Map<string, FSWatcher>();
  const retries = new Map<string, NodeJS.Timeout>();
  let debounce: NodeJS.Timeout | undefined;
  const reportedMissing = new Set<string>();
  let closed = false;

  const changed = (): void => {
    if (closed) return;
    if (debounce !== undefined) clearTimeout(debounce);
    debounce = setTimeout(() => {
      debounce = undefined;
      if (!closed) options.onChange();
    }, options.debounceMs);
    debounce.unref();
  };

  const retryLater = (directory: string): void => {
    if (closed || retries.has(directory)) return;
    const timer = setTimeout(() => {
      retries.delete(directory);
      // the files may have appeared together with their directory
      if (start(directory)) changed();
    }, options.retryMs);
    timer.unref();
    retries.set(directory, timer);
  };

  const start = (directory: string): boolean => {
    const names = namesByDirectory.get(directory) ?? new Set<string>();
    try {
      const watcher = watch(directory, { persistent: false }, (_event, filename) => {
        // some platforms do not report the name: then any change may concern us
        if (filename === null || names.has(filename.toString())) changed();
      });
      watcher.on('error', (error) => {
        options.log.warn({ directory, err: messageOf(error) }, 'watch failed, will retry');
        watcher.close();
        watchers.delete(directory);
        retryLater(directory);
        changed();
      });
      watchers.set(directory, watcher);
      if (reportedMissing.delete(directory)) options.log.info({ directory }, 'watching directory');
      return true;
    } catch (error) {
      // one line when it starts failing, not one per retry
      if (!reportedMissing.has(directory)) {
        reportedMissing.add(directory);
        options.log.info({ directory, err: messageOf(error) }, 'cannot watch directory yet, will retry');
      }
      retryLater(directory);
      return false;
    }
  };

  for (const directory of namesByDirectory.keys()) start(directory);

  return {
    close(): void {
      if (closed) return;
      closed = true;
      if (debounce !== undefined) clearTimeout(debounce);
      for (const timer of retries.values()) clearTimeout(timer);
      retries.clear();
      for (const watcher of watchers.values()) watcher.close();
      watchers.clear();
    },
  };
}
