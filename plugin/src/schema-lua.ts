// Renders the schema payg-pluginserver dumps as a Lua schema module, for Kong
// Konnect's hybrid mode (Konnect wants a schema.lua even for a plugin served by
// an external plugin server). Pure; `npm run schema:lua` writes plugin/schema.lua
// and spec/plugin/kong-conventions.spec.ts checks the file equals this rendering.

const LUA_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

function luaString(s: string): string {
  return `"${s.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n').replace(/\r/g, '\\r')}"`;
}

function luaValue(v: unknown, indent: string): string {
  if (v === null || v === undefined) return 'nil';
  if (typeof v === 'string') return luaString(v);
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error(`cannot render ${v} in Lua`);
    return String(v);
  }
  if (typeof v === 'boolean') return String(v);
  if (Array.isArray(v)) {
    if (v.length === 0) return '{}';
    // Scalars on one line ({ 1, 60000 }); tables one per line.
    if (v.every((x) => typeof x !== 'object' || x === null)) return `{ ${v.map((x) => luaValue(x, indent)).join(', ')} }`;
    const inner = `${indent}  `;
    return `{\n${v.map((x) => `${inner}${luaValue(x, inner)},`).join('\n')}\n${indent}}`;
  }
  if (typeof v === 'object') {
    const entries = Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined);
    if (entries.length === 0) return '{}';
    const inner = `${indent}  `;
    const key = (k: string) => (LUA_NAME.test(k) ? k : `[${luaString(k)}]`);
    return `{\n${entries.map(([k, x]) => `${inner}${key(k)} = ${luaValue(x, inner)},`).join('\n')}\n${indent}}`;
  }
  throw new Error(`cannot render a ${typeof v} in Lua`);
}

/** `schema` is the `Schema` of the plugin info (`{ name, fields }`), as Kong reads it from the dump. */
export function renderSchemaLua(schema: { name: string; fields: unknown[] }): string {
  return [
    '-- GENERATED from plugin/src/schema.ts by `npm run schema:lua`: do not edit by hand.',
    '-- The schema payg-pluginserver dumps, as a Lua module for Kong Konnect (hybrid mode).',
    `return ${luaValue({ name: schema.name, fields: schema.fields }, '')}`,
    '',
  ].join('\n');
}
