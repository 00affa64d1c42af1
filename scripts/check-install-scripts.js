#!/usr/bin/env node
'use strict';
// Checks package.json's install-script policy against package-lock.json, before
// anything is installed:
//  - every locked package that has an install script has an allowScripts entry
//    (true: it runs; false: it is skipped), and no entry names a package that has none;
//  - every approved package is locked at the version whose script was reviewed
//    (allowScriptsReviewed). npm itself can only honour name-only approvals here:
//    the lockfile carries no registry URLs (omit-lockfile-registry-resolved), and
//    npm trusts a pinned "name@version" entry only from such a URL. This check is
//    the pin: an upgrade fails CI until someone has read the new version's script.
// Exits 1 with one line per problem.
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8'));
const allow = pkg.allowScripts ?? {};
const reviewed = pkg.allowScriptsReviewed ?? {};

const nameOf = (key) => key.replace(/^(@[^@/]+\/[^@]+|[^@]+)@.*$/, '$1');
const withScripts = new Map(); // name -> locked versions
for (const [where, entry] of Object.entries(lock.packages ?? {})) {
  if (!where || !entry.hasInstallScript) continue;
  const name = where.slice(where.lastIndexOf('node_modules/') + 'node_modules/'.length);
  withScripts.set(name, [...(withScripts.get(name) ?? []), entry.version]);
}

const problems = [];
const entries = new Map(Object.entries(allow).map(([key, value]) => [nameOf(key), { key, value }]));
for (const [name, versions] of withScripts) {
  const entry = entries.get(name);
  if (!entry) { problems.push(`${name}@${versions.join(', ')} has an install script that allowScripts neither approves nor denies`); continue; }
  if (entry.value !== true) continue;
  for (const v of versions) {
    if (reviewed[name] !== v) problems.push(`${name} is locked at ${v}, but allowScriptsReviewed says its install script was reviewed at ${reviewed[name] ?? '(none)'}: read the new script, then update allowScriptsReviewed`);
  }
}
for (const [name, { key }] of entries) {
  if (!withScripts.has(name)) problems.push(`allowScripts entry "${key}": no locked package of that name has an install script (remove it)`);
}
for (const name of Object.keys(reviewed)) {
  if (entries.get(name)?.value !== true) problems.push(`allowScriptsReviewed names ${name}, which allowScripts does not approve`);
}

if (problems.length) {
  for (const p of problems) console.error(`install scripts: ${p}`);
  process.exit(1);
}
console.log(`install scripts: ${[...entries].filter(([, e]) => e.value === true).map(([n]) => `${n}@${reviewed[n]}`).join(', ')} approved as reviewed; ${[...entries].filter(([, e]) => e.value === false).length} denied`);
