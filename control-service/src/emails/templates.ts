// Email templates from config: subject, HTML and text bodies compiled once at
// start-up, with the trigger that sends them. A file that is missing, does not
// compile, or uses an unknown merge tag is a config error naming it.

import fs from 'node:fs';
import path from 'node:path';
import { compileTemplate, EMAIL_MERGE_TAGS, mergeContext, SAMPLE_CUSTOMER, SAMPLE_RECHARGE, type RenderFn } from '../merge-tags';
import type { TopUpConfig } from '../merge-tags';

/** What sends a template: entering or leaving a cohort, or credit falling below a threshold. */
export type EmailTrigger =
  | { kind: 'cohort'; cohort: string; on: 'enter' | 'leave' }
  | { kind: 'low_balance'; belowCents: number[] }
  /** Auto-recharge (issue 22): a recharge failed, needs the customer (3-D Secure), or auto-recharge paused. */
  | { kind: 'auto_recharge'; event: 'failed' | 'action_required' | 'paused' };

export interface EmailTemplate {
  id: string;
  trigger: EmailTrigger;
  active: boolean;
  from: { address: string; name?: string };
  subject: RenderFn;
  html: RenderFn | undefined;
  text: RenderFn | undefined;
  /** With a window, a customer still in the cohort gets the email again each time it passes. */
  reenrollAfterMs: number | undefined;
}

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** "90s", "15m", "1h", "2d" → milliseconds; undefined when the text is not a duration. */
export function parseDuration(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(text);
  return m ? Number(m[1]) * UNITS[m[2]] : undefined;
}

export class TemplateError extends Error {
  constructor(readonly field: string, reason: string) { super(reason); }
}

/** Handlebars' parse errors quote the source around the error; a config error never prints a file's contents. */
function withoutExcerpt(message: string): string {
  const lines = message.split('\n');
  if (lines.length === 1) return message;
  return [lines[0], ...lines.slice(1).filter((l) => /^Expecting /.test(l))].join(' ');
}

/** Reads and compiles one template source; `field` and `file` name it in errors. */
export function compileEmailPart(source: string, escaping: 'html' | 'none', where: string, topUp: TopUpConfig): RenderFn {
  let render: RenderFn;
  try {
    render = compileTemplate(source, escaping, EMAIL_MERGE_TAGS);
    render({ ...mergeContext(SAMPLE_CUSTOMER, topUp), threshold: { cents: 1000, formatted: '$10.00' }, recharge: SAMPLE_RECHARGE });
  } catch (err) {
    throw new TemplateError(where, `template does not compile: ${withoutExcerpt((err as Error).message)}`);
  }
  return render;
}

/**
 * Reads a template file, which must lie inside `baseDir` (the config file's
 * folder) once symlinks are resolved: a config cannot make the service read,
 * and echo in an error, a file elsewhere on the host.
 */
export function readTemplateFile(file: string, baseDir: string, field: string): { source: string; file: string } {
  const resolved = path.resolve(baseDir, file);
  let real: string;
  let realBase: string;
  try {
    realBase = fs.realpathSync(baseDir);
    real = fs.realpathSync(resolved);
  } catch (err) {
    throw new TemplateError(field, `cannot read template file ${resolved}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if (!real.startsWith(realBase + path.sep)) throw new TemplateError(field, `template file ${resolved} lies outside the config file's folder ${realBase}`);
  try {
    if (!fs.statSync(real).isFile()) throw new TemplateError(field, `template file ${resolved} is not a regular file`);
    return { source: fs.readFileSync(real, 'utf8'), file: resolved };
  } catch (err) {
    if (err instanceof TemplateError) throw err;
    throw new TemplateError(field, `cannot read template file ${resolved}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}
