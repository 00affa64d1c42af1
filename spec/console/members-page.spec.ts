// The members page pages through many customers in exactly the order a full
// sort gives, for every sort, direction, cohort and search (it selects only the
// page's rows instead of sorting everything; see console/page-order.ts).
import { expect } from 'chai';
import { customerFixture, startConsoleFixture, type ConsoleFixture, type Session } from '../support/console-fixture';

describe('console members page: search, sort and paging', function () {
  this.timeout(30_000);
  let fx: ConsoleFixture;
  let session: Session;
  const n = 1000;
  // Few distinct balances and names, so ties are common and must fall back to the id.
  const customers = Array.from({ length: n }, (_, i) => customerFixture((i * 7919) % n, ((i * 31) % 40) * 25 - 700));

  before(async () => {
    fx = await startConsoleFixture({ customers });
    session = await fx.signIn();
  });
  after(() => fx?.stop());

  const page = async (query: string) => {
    const res = await fx.call('GET', `/console/api/customers?${query}`, { session });
    expect(res.status).to.equal(200);
    return (await res.json()) as { total: number; customers: Array<{ id: string; name: string; estimated_balance: number; cohorts: string[] }> };
  };

  const expected = (filter: (c: typeof customers[number]) => boolean, sort: 'id' | 'name' | 'estimated_balance', dir: 1 | -1) => {
    const key = (c: typeof customers[number]) => (sort === 'id' ? c.id : sort === 'name' ? c.name! : c.balance);
    const byId = (a: typeof customers[number], b: typeof customers[number]) => (a.id < b.id ? -1 : 1);
    return customers.filter(filter).sort((a, b) => {
      const ka = key(a); const kb = key(b);
      return (ka < kb ? -dir : ka > kb ? dir : 0) || (sort === 'id' ? 0 : byId(a, b));
    }).map((c) => c.id);
  };

  for (const sort of ['estimated_balance', 'name', 'id'] as const) {
    for (const dir of ['asc', 'desc'] as const) {
      it(`every page of all customers by ${sort} ${dir} is the full sort's slice`, async () => {
        const want = expected(() => true, sort, dir === 'asc' ? 1 : -1);
        const got: string[] = [];
        for (let p = 1; p <= 9; p++) {
          const body = await page(`sort=${sort}&dir=${dir}&per_page=120&page=${p}`);
          expect(body.total).to.equal(n);
          got.push(...body.customers.map((c) => c.id));
        }
        expect(got).to.deep.equal(want);
      });
    }
  }

  it('a cohort\'s members, searched, sorted by name, page 2', async () => {
    const inLowCredit = (c: typeof customers[number]) => c.balance > -500;
    const want = expected((c) => inLowCredit(c) && /customer 1/i.test(c.name!), 'name', -1);
    const body = await page('cohort=low-credit&q=CUSTOMER%201&sort=name&dir=desc&per_page=10&page=2');
    expect(body.total).to.equal(want.length);
    expect(body.customers.map((c) => c.id)).to.deep.equal(want.slice(10, 20));
    for (const c of body.customers) expect(c.cohorts).to.include('low-credit');
  });

  it('a search matches the email and the Kong consumer, case-insensitively, and treats regex characters as text', async () => {
    expect((await page('q=C12%40EXAMPLE.com')).customers.map((c) => c.id)).to.deep.equal(['cus_000012']);
    expect((await page('q=consumer-999')).customers.map((c) => c.id)).to.deep.equal(['cus_000999']);
    expect((await page('q=.*')).total).to.equal(0);
  });

  it('a page past the end is empty and says how many there are', async () => {
    const body = await page('page=500');
    expect(body).to.include({ total: n });
    expect(body.customers).to.deep.equal([]);
  });
});
