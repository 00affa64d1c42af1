// The pay-as-you-go story, step by step, against a running stack. Each step
// prints what happened and how long it took; a step that does not happen
// throws a StoryError naming it.
import type { ParsedMail } from 'mailparser';
import { ADMIN_TOKEN, type Stack } from './stack';

export class StoryError extends Error {
  constructor(readonly step: string, reason: string) { super(`${step}: ${reason}`); }
}

export interface StoryResult {
  aliceBlockedAfterMs: number;
  aliceBlockedBody: unknown;
  outOfCreditEmail: { subject: string; text: string; to: string };
  aliceRestoredAfterMs: number;
  restoredEmail: { subject: string; text: string; to: string };
  bobServed: number;
  bobBlockedAfterLastAffordableMs: number;
  settledCents: Record<string, number>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export async function playStory(stack: Stack, print: (line: string) => void = console.log): Promise<StoryResult> {
  const { stripe, smtp, gateway, keys, customers } = stack;
  const call = async (key: string) => {
    const res = await fetch(`${gateway.url}/api/hello`, { headers: { apikey: key } });
    return { status: res.status, body: await res.text() };
  };
  /** Calls every 20 ms until the answer has `status`; returns it and how long it took. */
  const callUntil = async (step: string, key: string, status: number, timeoutMs = 10_000) => {
    const t0 = Date.now();
    for (;;) {
      const res = await call(key);
      if (res.status === status) return { ...res, ms: Date.now() - t0 };
      if (Date.now() - t0 > timeoutMs) throw new StoryError(step, `still ${res.status} after ${timeoutMs} ms, wanted ${status}`);
      await sleep(20);
    }
  };
  const emailTo = async (step: string, to: string, subject: RegExp, since: number, timeoutMs = 10_000): Promise<{ mail: ParsedMail; ms: number }> => {
    const t0 = Date.now();
    for (;;) {
      const mail = (await smtp.inbox()).slice(since).find((m) => !Array.isArray(m.to) && m.to?.value[0]?.address === to && subject.test(m.subject ?? ''));
      if (mail) return { mail, ms: Date.now() - t0 };
      if (Date.now() - t0 > timeoutMs) throw new StoryError(step, `no email "${subject.source}" to ${to} within ${timeoutMs} ms`);
      await sleep(20);
    }
  };
  /**
   * What Alice does in her browser, as plain HTTP: the 402's link → the page → a preset →
   * 303 to the (emulated) hosted Checkout → Pay with a test card → 303 back to the success
   * page, read again (it refreshes itself) until the credit has landed.
   */
  const buyThroughPage = async (step: string, link: string | undefined, amount: number) => {
    if (!link || !link.startsWith(`${gateway.url}/top-up/`)) throw new StoryError(step, `the 402 body has no top-up link on the gateway: ${link}`);
    const page = await fetch(link);
    const html = await page.text();
    const nonce = /name="nonce" value="([^"]+)"/.exec(html)?.[1];
    const action = /<form method="post" action="([^"]+)"/.exec(html)?.[1];
    if (page.status !== 200 || !nonce || !action) throw new StoryError(step, `the top-up page answered ${page.status} without its form`);
    const form = (fields: Record<string, string>) => ({ method: 'POST', redirect: 'manual' as const, headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: new URLSearchParams(fields).toString() });
    const chosen = await fetch(new URL(action, link), form({ nonce, preset: String(amount) }));
    const checkout = chosen.headers.get('location');
    if (chosen.status !== 303 || !checkout) throw new StoryError(step, `choosing an amount answered ${chosen.status}`);
    const paid = await fetch(checkout, form({ email: 'alice@example.com', name: 'Alice Example', payment_method: 'pm_card_visa' }));
    const success = paid.headers.get('location');
    if (paid.status !== 303 || !success) throw new StoryError(step, `paying on Checkout answered ${paid.status}`);
    for (const t0 = Date.now(); ; await sleep(50)) {
      const done = await (await fetch(success)).text();
      const title = /<h1>([^<]+)<\/h1>/.exec(done)?.[1] ?? '';
      if (title === 'Credit added') return { link, pageStatus: page.status, doneTitle: title };
      if (Date.now() - t0 > 10_000) throw new StoryError(step, `the success page still says "${title}" after 10 s`);
    }
  };
  const email = (m: ParsedMail) => ({ subject: m.subject ?? '', text: (m.text ?? '').trim(), to: !Array.isArray(m.to) ? m.to?.value[0]?.address ?? '' : '' });
  const indent = (text: string) => text.split('\n').map((l) => `      ${l}`).join('\n');

  let step = '1. Alice calls the API with $100.00 of credit';
  const first = await call(keys.alice);
  if (first.status !== 200) throw new StoryError(step, `got ${first.status} ${first.body}`);
  print(`✔ ${step}: 200 ${first.body}`);

  step = '2. Alice\'s credit is debited to $0 in Stripe';
  const inboxBefore = smtp.raw.length;
  stripe.addBalanceTransaction(customers.alice, 10_000);
  print(`✔ ${step}: a +$100.00 customer balance transaction (Stripe sends customer.updated)`);

  step = '3. Alice\'s next call is refused';
  const blocked = await callUntil(step, keys.alice, 402);
  let blockedBody: unknown;
  try { blockedBody = JSON.parse(blocked.body); } catch { throw new StoryError(step, `body is not JSON: ${blocked.body}`); }
  print(`✔ ${step}: 402 ${blocked.body}\n    (the block took ${blocked.ms} ms to apply)`);

  step = '4. The out-of-credit email arrives';
  const out = await emailTo(step, 'alice@example.com', /credit has run out/, inboxBefore);
  print(`✔ ${step} (${out.ms} ms after the block): "${out.mail.subject}"\n${indent(email(out.mail).text)}`);

  step = '5. Alice tops up $20.00';
  // Her usage leaves the gateway after each response: wait until the service has all of it (no lease of hers
  // still holds a drawn request), so the "restored" email shows the credit she really has.
  for (const t0 = Date.now(); Date.now() - t0 < 5000; await sleep(20)) {
    const r = await fetch(`${stack.svc.url}/admin/customers/${customers.alice}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    const { leases } = (await r.json()) as { leases: Array<{ held_requests: number; open: boolean }> };
    if (leases.every((l) => !l.open && l.held_requests === 0)) break;
  }
  const inboxBeforeRestore = smtp.raw.length;
  const topUp = await buyThroughPage(step, (blockedBody as { top_up?: string }).top_up, 2000);
  print(`✔ ${step} on payg's page and Stripe Checkout: ${topUp.pageStatus} page → $20.00 chosen → 303 to Checkout → paid → back on "${topUp.doneTitle}"\n    (link ${topUp.link.replace(/(top-up\/v1\.[^.]+\.[^.]+\.).{8}.*/, '$1…')})`);

  step = '6. Alice\'s calls pass again';
  const back = await callUntil(step, keys.alice, 200);
  print(`✔ ${step}: 200 (access came back ${back.ms} ms after the success page showed the credit)`);

  step = '7. The "access restored" email arrives';
  const restored = await emailTo(step, 'alice@example.com', /restored/i, inboxBeforeRestore);
  print(`✔ ${step}: "${restored.mail.subject}"\n${indent(email(restored.mail).text)}`);

  step = '8. Bob spends his $0.50 at $0.01 a call, metered at the gateway';
  let served = 0;
  let lastAffordableAt = 0;
  let refused: { status: number; body: string } | undefined;
  for (let i = 0; i < 200 && !refused; i++) {
    const res = await call(keys.bob);
    if (res.status === 200) {
      served++;
      if (served === 50) lastAffordableAt = Date.now();
    } else refused = res;
    await sleep(5);
  }
  if (!refused || refused.status !== 402) throw new StoryError(step, `bob was never refused (${served} calls served)`);
  if (served < 50) throw new StoryError(step, `bob was refused after ${served} calls, before his credit was spent`);
  const bobMs = Date.now() - lastAffordableAt;
  print(`✔ ${step}: ${served} calls served, then 402 ${refused.body}\n    (first 402 ${bobMs} ms after the 50th call, the last his credit paid for)`);

  step = '9. Usage is settled to Stripe';
  // Usage leaves the gateway in batches, after the response: wait until the service has all of Bob's.
  for (const t0 = Date.now(); Date.now() - t0 < 5000; await sleep(20)) {
    const r = await fetch(`${stack.svc.url}/admin/customers/${customers.bob}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    if (((await r.json()) as { unsettled_usage: number }).unsettled_usage >= served) break;
  }
  const res = await fetch(`${stack.svc.url}/admin/settle`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  const settle = await res.json() as { confirmed: number; failed: number };
  if (res.status !== 200 || settle.failed > 0) throw new StoryError(step, `settlement answered ${res.status} ${JSON.stringify(settle)}`);
  const settledCents: Record<string, number> = {};
  for (const t of stripe.balanceTransactions) {
    const meta = t.metadata as Record<string, string> | undefined;
    if (meta?.payg_settlement) settledCents[t.customer as string] = (settledCents[t.customer as string] ?? 0) + (t.amount as number);
  }
  print(`✔ ${step}: balance transactions in Stripe for the usage: ${Object.entries(settledCents).map(([c, cents]) => `${c} $${(cents / 100).toFixed(2)}`).join(', ')}`);

  return {
    aliceBlockedAfterMs: blocked.ms, aliceBlockedBody: blockedBody, outOfCreditEmail: email(out.mail),
    aliceRestoredAfterMs: back.ms, restoredEmail: email(restored.mail), bobServed: served, bobBlockedAfterLastAffordableMs: bobMs, settledCents,
  };
}
