// Checks a plugin config against a dumped schema with Kong's rules for the
// parts payg uses, and a schema against Kong's metaschema rules.

type Field = {
  type: string; required?: boolean; default?: unknown; one_of?: unknown[]; between?: [number, number];
  match?: string; referenceable?: boolean; fields?: Array<Record<string, Field>>; elements?: unknown;
  keys?: unknown; values?: unknown; description?: string;
};
export type SchemaFields = Array<Record<string, Field>>;

const KONG_TYPES = new Set(['string', 'number', 'integer', 'boolean', 'array', 'set', 'map', 'record', 'foreign', 'function', 'json']);

/** Kong's metaschema checks a plugin server's dump must pass; returns the problems found. */
export function metaschemaProblems(fields: SchemaFields, prefix = ''): string[] {
  const problems: string[] = [];
  for (const entry of fields) {
    const names = Object.keys(entry);
    if (names.length !== 1) problems.push(`${prefix}entry has ${names.length} names`);
    const [name] = names;
    const f = entry[name];
    const at = `${prefix}${name}`;
    if (!KONG_TYPES.has(f.type)) problems.push(`${at}: unknown type ${f.type}`);
    if ((f.type === 'array' || f.type === 'set') && !f.elements) problems.push(`${at}: ${f.type} needs elements`);
    if (f.type === 'map' && (!f.keys || !f.values)) problems.push(`${at}: map needs keys and values`);
    if (f.type === 'record') {
      if (!Array.isArray(f.fields)) problems.push(`${at}: record needs fields`);
      else problems.push(...metaschemaProblems(f.fields, `${at}.`));
    }
    if (f.referenceable && f.type !== 'string') problems.push(`${at}: only strings are referenceable`);
    if (f.between && (f.type !== 'integer' && f.type !== 'number')) problems.push(`${at}: between on a non-number`);
    if (f.default !== undefined && validateValue(f, f.default, at).length > 0) problems.push(`${at}: default does not validate`);
  }
  return problems;
}

function validateValue(f: Field, value: unknown, at: string): string[] {
  if (f.referenceable && typeof value === 'string' && /^\{vault:\/\/[^}]+\}$/.test(value)) return [];
  switch (f.type) {
    case 'string':
      if (typeof value !== 'string') return [`${at}: expected a string`];
      if (f.one_of && !f.one_of.includes(value)) return [`${at}: expected one of: ${f.one_of.join(', ')}`];
      if (f.match && !new RegExp(f.match).test(value)) return [`${at}: invalid value: ${value}`];
      return [];
    case 'integer':
    case 'number':
      if (typeof value !== 'number' || (f.type === 'integer' && !Number.isInteger(value))) return [`${at}: expected an ${f.type}`];
      if (f.between && (value < f.between[0] || value > f.between[1])) return [`${at}: value should be between ${f.between[0]} and ${f.between[1]}`];
      return [];
    case 'boolean':
      return typeof value === 'boolean' ? [] : [`${at}: expected a boolean`];
    case 'record':
      if (typeof value !== 'object' || value === null || Array.isArray(value)) return [`${at}: expected a record`];
      return validateConfig(f.fields ?? [], value as Record<string, unknown>, `${at}.`);
    case 'array':
    case 'set':
      if (!Array.isArray(value)) return [`${at}: expected an array`];
      if (!f.elements) return [`${at}: array needs elements`];
      return value.flatMap((v, i) => validateValue(f.elements as Field, v, `${at}[${i}]`));
    default:
      return [`${at}: type ${f.type} not checked here`];
  }
}

/** Kong's validation of a plugin's `config`: unknown fields, required fields, types and rules. */
export function validateConfig(fields: SchemaFields, config: Record<string, unknown>, prefix = ''): string[] {
  const known = new Map(fields.map((e) => Object.entries(e)[0]));
  const problems: string[] = [];
  for (const key of Object.keys(config)) if (!known.has(key)) problems.push(`${prefix}${key}: unknown field`);
  for (const [name, f] of known) {
    const value = config[name];
    if (value === undefined || value === null) {
      if (f.required && f.default === undefined && f.type !== 'record') problems.push(`${prefix}${name}: required field missing`);
      continue;
    }
    problems.push(...validateValue(f, value, `${prefix}${name}`));
  }
  return problems;
}
