// Usage that could not be sent before the plugin server stopped is written under
// Kong's prefix (the -p/--kong-prefix directory) and sent after the next start.
// One file per control service; event ids make a resend harmless (the service
// ignores an id it has seen).
import fs from 'node:fs';
import path from 'node:path';
import { createHash } from 'node:crypto';
import type { UsageEvent } from './usage-queue';

let spoolDir: string | undefined;

/** Set once by the plugin server from --kong-prefix. */
export function setSpoolDir(dir: string | undefined): void { spoolDir = dir; }

export function spoolFile(controlServiceUrl: string): string | undefined {
  if (spoolDir === undefined) return undefined;
  return path.join(spoolDir, `payg-usage-${createHash('sha256').update(controlServiceUrl).digest('hex').slice(0, 16)}.jsonl`);
}

/** Appends events, one JSON line each, and syncs the file (called while stopping). */
export function writeSpool(file: string, events: UsageEvent[]): void {
  if (events.length === 0) return;
  const fd = fs.openSync(file, 'a', 0o600);
  try {
    fs.writeSync(fd, events.map((e) => JSON.stringify(e)).join('\n') + '\n');
    fs.fsyncSync(fd);
  } finally { fs.closeSync(fd); }
}

/** Reads and removes the spool; a torn last line (a crash mid-write) is skipped. */
export function takeSpool(file: string): UsageEvent[] {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch { return []; }
  fs.rmSync(file, { force: true });
  const events: UsageEvent[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    try {
      const e = JSON.parse(line) as UsageEvent;
      if (typeof e.id === 'string' && typeof e.consumer === 'string') events.push(e);
    } catch { /* torn line */ }
  }
  return events;
}
