// Headless Chromium for the console's browser specs, through playwright-core:
// Debian's `chromium` when installed, else the binary the @sparticuz/chromium
// npm package ships (so `npm ci && npm test` needs nothing else). The browser
// starts with a fresh profile and without background networking; the specs
// point it only at loopback.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium, type Browser, type BrowserContext } from 'playwright-core';

const DEBIAN_CHROMIUM = '/usr/bin/chromium';

export async function chromiumPath(): Promise<string> {
  if (process.env.PAYG_CHROMIUM) return process.env.PAYG_CHROMIUM;
  if (fs.existsSync(DEBIAN_CHROMIUM)) return DEBIAN_CHROMIUM;
  // Decompresses its bundled binary into the temp dir once.
  const mod = await import('@sparticuz/chromium');
  return (mod.default ?? mod).executablePath();
}

export const CHROMIUM_FLAGS = [
  '--no-sandbox', '--headless', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--no-first-run', '--disable-default-apps', '--disable-extensions', '--mute-audio',
];

export interface HeadlessBrowser { browser: BrowserContext; close(): Promise<void> }

/** A persistent context on a fresh --user-data-dir, removed on close. */
export async function launchChromium(): Promise<HeadlessBrowser> {
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'payg-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: await chromiumPath(), headless: true, ignoreDefaultArgs: true,
    args: [...CHROMIUM_FLAGS, `--user-data-dir=${userDataDir}`, '--remote-debugging-pipe', 'about:blank'],
    viewport: { width: 1360, height: 900 },
  });
  return {
    browser: context,
    async close() { await context.close(); fs.rmSync(userDataDir, { recursive: true, force: true }); },
  };
}
export type { Browser };
