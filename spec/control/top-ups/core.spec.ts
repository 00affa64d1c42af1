// Top-ups, the pure core: signed links, amounts, which sessions credit and how
// much refunds and disputes take back, the config, and {{top_up_url}}.
import { expect } from 'chai';
import { signToken, verifyToken } from '../../../control-service/src/top-ups/token';
import { chooseAmount, creditIntent, debitFor, decideCredit, moveRefOf, topUpId, type SessionRead, type TopUpRecord } from '../../../control-service/src/top-ups/core';
import { contentSecurityPolicy, topUpPage } from '../../../control-service/src/top-ups/page';
import { ConfigError, parseConfig } from '../../../control-service/src/config';
import { mergeContext } from '../../../control-service/src/merge-tags';

const SECRET = 'a'.repeat(40);
const NOW = Date.UTC(2026, 0, 1);

describe('top-ups: the pure core', () => {
  describe('signed links', () => {
    const token = signToken(SECRET, 'cus_alice', NOW + 60_000);
    it('a token names its customer until it expires', () => {
      expect(verifyToken(SECRET, token, NOW)).to.deep.equal({ kind: 'valid', customerId: 'cus_alice', expiresAt: NOW + 60_000 });
      expect(verifyToken(SECRET, token, NOW + 60_000).kind).to.equal('expired');
    });
    it('tampered: any changed character, another customer, a later expiry, another secret', () => {
      const [v, id, exp, mac] = token.split('.');
      const bob = Buffer.from('cus_bob').toString('base64url');
      expect(verifyToken(SECRET, [v, bob, exp, mac].join('.'), NOW).kind, 'foreign customer').to.equal('bad_signature');
      expect(verifyToken(SECRET, [v, id, (parseInt(exp, 36) + 86400).toString(36), mac].join('.'), NOW).kind, 'extended').to.equal('bad_signature');
      expect(verifyToken('b'.repeat(40), token, NOW).kind, 'other secret').to.equal('bad_signature');
      for (let i = 0; i < token.length; i++) {
        const c = token[i] === 'A' ? 'B' : 'A';
        const t = token.slice(0, i) + c + token.slice(i + 1);
        expect(verifyToken(SECRET, t, NOW).kind, `character ${i}`).to.not.equal('valid');
      }
    });
    it('malformed: empty, other versions, extra parts, huge, non-canonical base64', () => {
      for (const t of ['', 'v1', 'v2.' + token.slice(3), token + '.x', 'x'.repeat(5000), token.replace(/^v1\./, 'v1.=')]) {
        expect(verifyToken(SECRET, t, NOW).kind, t.slice(0, 30)).to.be.oneOf(['malformed', 'bad_signature']);
      }
    });
    it('tokens of two customers differ and neither says anything guessable about the other', () => {
      expect(signToken(SECRET, 'cus_a', NOW)).to.not.equal(signToken(SECRET, 'cus_b', NOW));
      expect(signToken(SECRET, 'cus_a', NOW).split('.')[3]).to.have.length(43); // 256-bit MAC
    });
  });

  describe('amounts', () => {
    const usd = { presets: [1000, 2500], min: 500, max: 50_000 };
    it('presets, custom in major units, bounds, decimals', () => {
      expect(chooseAmount({ preset: '2500' }, 'usd', usd)).to.deep.equal({ kind: 'ok', amount: 2500 });
      expect(chooseAmount({ custom: '12.50' }, 'usd', usd)).to.deep.equal({ kind: 'ok', amount: 1250 });
      expect(chooseAmount({ custom: '12,5' }, 'usd', usd)).to.deep.equal({ kind: 'ok', amount: 1250 });
      expect(chooseAmount({ custom: '500' }, 'usd', usd)).to.deep.equal({ kind: 'ok', amount: 50_000 });
      expect(chooseAmount({ custom: '500.01' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'above_max' });
      expect(chooseAmount({ custom: '4.99' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'below_min' });
      expect(chooseAmount({ custom: '12.345' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'not_whole' });
      expect(chooseAmount({ custom: '-10' }, 'usd', usd).kind).to.equal('refused');
      expect(chooseAmount({ custom: '1e3' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'not_a_number' });
      expect(chooseAmount({ custom: '99999999999999999999' }, 'usd', usd).kind).to.equal('refused');
      expect(chooseAmount({}, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'missing' });
      expect(chooseAmount({ preset: '100' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'below_min' });
      expect(chooseAmount({ preset: '2500.5' }, 'usd', usd)).to.deep.equal({ kind: 'refused', reason: 'not_a_number' });
      expect(chooseAmount({ preset: '1000' }, 'eur', undefined)).to.deep.equal({ kind: 'refused', reason: 'currency' });
    });
    it('zero-decimal currencies take whole amounts only', () => {
      const jpy = { presets: [], min: 500, max: 100_000 };
      expect(chooseAmount({ custom: '1500' }, 'jpy', jpy)).to.deep.equal({ kind: 'ok', amount: 1500 });
      expect(chooseAmount({ custom: '1500.5' }, 'jpy', jpy)).to.deep.equal({ kind: 'refused', reason: 'not_whole' });
    });
    it('one form submitted twice names one top-up; another nonce, amount or customer another', () => {
      const id = topUpId(SECRET, 'cus_a', 'nonce-0123456789ab', 1000, 'usd');
      expect(topUpId(SECRET, 'cus_a', 'nonce-0123456789ab', 1000, 'usd')).to.equal(id);
      expect(new Set([id, topUpId(SECRET, 'cus_b', 'nonce-0123456789ab', 1000, 'usd'), topUpId(SECRET, 'cus_a', 'nonce-0123456789ac', 1000, 'usd'),
        topUpId(SECRET, 'cus_a', 'nonce-0123456789ab', 1001, 'usd')]).size).to.equal(4);
    });
  });

  describe('which sessions credit', () => {
    const record: TopUpRecord = { id: 'tu_1', customerId: 'cus_a', amount: 2500, currency: 'usd', sessionId: 'cs_1' };
    const paid: SessionRead = { id: 'cs_1', mode: 'payment', status: 'complete', paymentStatus: 'paid', customer: 'cus_a', currency: 'usd', amountSubtotal: 2500, amountTotal: 2700, topUpId: 'tu_1', paymentIntent: 'pi_1' };
    it('a paid session of ours credits the recorded amount before tax', () => {
      expect(decideCredit(paid, record)).to.deep.equal({ kind: 'credit', customerId: 'cus_a', amount: 2500, currency: 'usd' });
      expect(decideCredit({ ...paid, paymentStatus: 'unpaid' }, record).kind, 'async payment not there yet').to.equal('wait');
    });
    it('anything else is refused with the reason', () => {
      const cases: Array<[string, SessionRead, TopUpRecord | undefined]> = [
        ['not ours', { ...paid, topUpId: undefined }, record],
        ['made-up top-up id', paid, undefined],
        ['another customer', { ...paid, customer: 'cus_b' }, record],
        ['another currency', { ...paid, currency: 'eur' }, record],
        ['another amount', { ...paid, amountSubtotal: 250_000 }, record],
        ['another mode', { ...paid, mode: 'subscription' }, record],
        ['another session of that top-up', { ...paid, id: 'cs_2' }, record],
      ];
      for (const [what, s, r] of cases) expect(decideCredit(s, r).kind, what).to.equal('refuse');
    });
    it('the credit is −amount with a key and metadata from the session', () => {
      const i = creditIntent('cs_1', 'tu_1', 'cus_a', 2500, 'usd');
      expect(i).to.include({ amount: -2500, idempotencyKey: 'payg-top-up-cs_1', ref: 'credit:cs_1' });
      expect(i.metadata.payg_top_up).to.equal('cs_1');
      expect(moveRefOf(i.metadata)).to.equal('credit:cs_1');
      expect(moveRefOf({ payg_settlement: '3' })).to.equal(undefined);
    });
  });

  describe('refunds and disputes', () => {
    it('take back the refunded share of the credit, never more than was credited', () => {
      expect(debitFor(2700, 2700, 2500, 0), 'full refund, tax included').to.equal(2500);
      expect(debitFor(1350, 2700, 2500, 0), 'half').to.equal(1250);
      expect(debitFor(2700, 2700, 2500, 1250), 'the other half (2700 taken back in all)').to.equal(1250);
      expect(debitFor(2700, 2700, 2500, 1250), 'dispute after a partial refund').to.equal(1250);
      expect(debitFor(100, 2700, 2500, 2500), 'nothing left').to.equal(0);
      expect(debitFor(0, 2700, 2500, 0)).to.equal(0);
    });

    it('repeated partial refunds take back the share of their running total, not each rounded on its own', () => {
      // A top-up that credited 1000, paid 1200 with 20% tax.
      const run = (refunds: number[], paid = 1200, credited = 1000) => {
        let taken = 0; let debited = 0;
        for (const r of refunds) { taken += r; debited += debitFor(taken, paid, credited, debited); }
        return debited;
      };
      expect(run(Array(600).fill(1)), '600 refunds of 1 cent: half the payment').to.equal(500);
      expect(run([400, 400, 400]), 'three refunds of 400: the whole payment').to.equal(1000);
      expect(run([500, 500], 1100), 'two refunds of 500 of 1100').to.equal(909);
    });
  });

  describe('config', () => {
    const checkout = { public_url: 'https://api.example.com/', currencies: { usd: { presets: [1000], min: 500, max: 50_000 } } };
    const env = { PAYG_TOP_UP_SECRET: SECRET };
    it('needs PAYG_TOP_UP_SECRET, long enough', () => {
      expect(() => parseConfig({ top_up: { checkout } }, {}, '/')).to.throw(ConfigError, /PAYG_TOP_UP_SECRET: is required/);
      expect(() => parseConfig({ top_up: { checkout } }, { PAYG_TOP_UP_SECRET: 'short' }, '/')).to.throw(ConfigError, /PAYG_TOP_UP_SECRET: is too short/);
    });
    it('names the field of a bad amount, currency or combination', () => {
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, currencies: { usd: { presets: [100], min: 500, max: 50_000 } } } } }, env, '/')).to.throw(/top_up\.checkout\.currencies\.usd\.presets\[0\]/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, currencies: { usd: { min: 500, max: 400 } } } } }, env, '/')).to.throw(/currencies\.usd\.max/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, currencies: { USD: { min: 1, max: 2 } } } } }, env, '/')).to.throw(/top_up\.checkout\.currencies/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, currencies: {} } } }, env, '/')).to.throw(/top_up\.checkout\.currencies/);
      expect(() => parseConfig({ top_up: { url: 'https://x.example', checkout } }, env, '/')).to.throw(/top_up: set either url/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, default_currency: 'eur' } } }, env, '/')).to.throw(/default_currency/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, public_url: 'https://api.example.com/billing' } } }, env, '/')).to.throw(/top_up\.checkout\.public_url: must be an origin/);
      expect(() => parseConfig({ top_up: { checkout: { ...checkout, public_url: 'javascript:alert(1)' } } }, env, '/')).to.throw(/top_up\.checkout\.public_url/);
    });
    it('{{top_up_url}} is a signed link to the page with checkout, top_up.url without', () => {
      const config = parseConfig({ top_up: { checkout } }, env, '/');
      const url = mergeContext({ id: 'cus_a', balance: 0, currency: 'usd', name: null, email: null, metadata: {} }, config.topUp).top_up_url;
      const m = /^https:\/\/api\.example\.com\/top-up\/([^/]+)$/.exec(url);
      expect(m, url).to.not.equal(null);
      const check = verifyToken(SECRET, m![1], Date.now());
      expect(check).to.include({ kind: 'valid', customerId: 'cus_a' });
      expect((check as { expiresAt: number }).expiresAt - Date.now()).to.be.within(30 * 86_400_000 - 5000, 30 * 86_400_000 + 1000);
      const own = parseConfig({ top_up: { url: 'https://billing.example.com/top-up?customer={customer_id}' } }, {}, '/');
      expect(mergeContext({ id: 'cus_a', balance: 0, currency: 'usd', name: null, email: null, metadata: {} }, own.topUp).top_up_url).to.equal('https://billing.example.com/top-up?customer=cus_a');
    });
  });

  describe('top_up.metadata_key', () => {
    it('top_up.metadata_key: the customer\'s own top-up link wins over top_up.url', () => {
      const customer = (metadata: Record<string, string>) => ({ id: 'cus_a', balance: 0, currency: 'usd', name: 'Ada Lovelace', email: 'ada@example.com', metadata });
      const topUp = { url: 'https://pay.example.com/{customer_id}', metadata_key: 'top_up' };
      expect(mergeContext(customer({ top_up: 'https://vip.example.com/ada' }), topUp).top_up_url).to.equal('https://vip.example.com/ada');
      expect(mergeContext(customer({}), topUp).top_up_url).to.equal('https://pay.example.com/cus_a');
    });
  });

  describe('the page', () => {
    it('escapes the name, runs no script, allows only its own style and Checkout', () => {
      const html = topUpPage({ customer: { name: '<script>alert(1)</script>', creditMinor: 0, currency: 'usd' }, amounts: { presets: [1000], min: 500, max: 5000 }, nonce: 'n'.repeat(22), action: '/top-up/t' });
      expect(html).to.not.include('<script>');
      expect(html).to.include('&lt;script&gt;');
      expect(html).to.include('$10.00').and.include('name="custom"');
      const csp = contentSecurityPolicy(['https://checkout.stripe.com']);
      expect(csp).to.match(/default-src 'none'/).and.match(/style-src 'sha256-[^']+'/).and.match(/form-action 'self' https:\/\/checkout\.stripe\.com/);
      expect(csp).to.not.include('unsafe');
    });
  });
});
