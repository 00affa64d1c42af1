// npm run schema:lua — writes plugin/schema.lua from the schema that
// `payg-pluginserver --dump-all-plugins` prints (the one Kong reads).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { renderSchemaLua } from '../plugin/src/schema-lua';

const ROOT = path.join(__dirname, '..', '..');
export const SCHEMA_LUA = path.join(ROOT, 'plugin', 'schema.lua');

export function dumpedSchema(): { name: string; fields: unknown[] } {
  const run = spawnSync(process.execPath, [path.join(ROOT, 'plugin', 'bin', 'payg-pluginserver'), '--dump-all-plugins'], { encoding: 'utf8' });
  if (run.status !== 0) throw new Error(`payg-pluginserver --dump-all-plugins failed: ${run.stderr.split('\n')[0]}`);
  return (JSON.parse(run.stdout) as Array<{ Schema: { name: string; fields: unknown[] } }>)[0].Schema;
}

if (require.main === module) {
  fs.writeFileSync(SCHEMA_LUA, renderSchemaLua(dumpedSchema()));
  process.stderr.write(`wrote ${path.relative(process.cwd(), SCHEMA_LUA)}\n`);
}
