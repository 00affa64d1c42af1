// Helpers of the top-up specs: a free loopback port (the page's public URL
// must be known before the service listens) and the page's form fields.
import net from 'node:net';

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** The page's form fields: the nonce and the action. */
export function formOf(html: string): { nonce: string; action: string } {
  const nonce = /name="nonce" value="([^"]+)"/.exec(html)?.[1];
  const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
  if (!nonce || !action) throw new Error(`no form in ${html}`);
  return { nonce, action: action.replace(/&amp;/g, '&') };
}
