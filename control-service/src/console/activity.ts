// What the console shows about recent decisions, kept in memory only (a
// restart starts them empty): blocks and would-blocks per minute by rule for
// the last hour, the last decisions in a ring buffer, and samples of each
// active customer's estimated balance. Recording is O(1) per decision, so the
// decision path stays cheap; it runs only when the console is configured.

export interface RecordedDecision { at: number; consumer: string; customerId: string | null; outcome: string; rule: string | null; wouldBlock: string[] }

const MINUTE = 60_000;

export class ActivityRecorder {
  /** minute index → rule → count */
  private readonly blocks = new Map<number, Map<string, number>>();
  private readonly wouldBlocks = new Map<number, Map<string, number>>();
  private readonly ring: Array<RecordedDecision | undefined>;
  private next = 0;
  /** customer → [at, estimated balance] samples, oldest first; Map order = least recently sampled first. */
  private readonly samples = new Map<string, Array<[number, number]>>();

  constructor(private readonly opts: { minutes?: number; ringSize?: number; sampleEveryMs?: number; samplesPerCustomer?: number; maxSampledCustomers?: number; now?: () => number } = {}) {
    this.ring = new Array(opts.ringSize ?? 5000);
  }

  private get now(): number { return (this.opts.now ?? Date.now)(); }

  record(d: RecordedDecision): void {
    this.ring[this.next] = d;
    this.next = (this.next + 1) % this.ring.length;
    const minute = Math.floor(d.at / MINUTE);
    if (d.rule) bump(this.blocks, minute, d.rule);
    for (const r of d.wouldBlock) bump(this.wouldBlocks, minute, r);
    this.trim(minute);
  }

  /** One estimated-balance sample per customer per `sampleEveryMs`; a bounded number of customers is kept. */
  sampleBalance(customerId: string, balance: number, at: number = this.now): void {
    const every = this.opts.sampleEveryMs ?? 10_000;
    let list = this.samples.get(customerId);
    const last = list?.[list.length - 1];
    if (last && last[1] === balance && at - last[0] < every) return;
    if (!list) {
      list = [];
      if (this.samples.size >= (this.opts.maxSampledCustomers ?? 10_000)) this.samples.delete(this.samples.keys().next().value as string);
    } else this.samples.delete(customerId); // re-insert: most recently sampled last
    this.samples.set(customerId, list);
    if (last && at - last[0] < every) list[list.length - 1] = [at, balance];
    else list.push([at, balance]);
    if (list.length > (this.opts.samplesPerCustomer ?? 200)) list.shift();
  }

  balanceSamples(customerId: string): Array<[number, number]> { return this.samples.get(customerId) ?? []; }

  /** Newest first. */
  recent(filter: (d: RecordedDecision) => boolean, limit: number): RecordedDecision[] {
    const out: RecordedDecision[] = [];
    for (let i = 1; i <= this.ring.length && out.length < limit; i++) {
      const d = this.ring[(this.next - i + this.ring.length) % this.ring.length];
      if (!d) break;
      if (filter(d)) out.push(d);
    }
    return out;
  }

  /** Per rule: counts for each of the last `minutes` minutes, oldest first. */
  perMinute(kind: 'blocks' | 'would_blocks', minutes = this.opts.minutes ?? 60): { minutes: number[]; rules: Record<string, number[]> } {
    const source = kind === 'blocks' ? this.blocks : this.wouldBlocks;
    const end = Math.floor(this.now / MINUTE);
    const idx = Array.from({ length: minutes }, (_, i) => end - minutes + 1 + i);
    const rules: Record<string, number[]> = {};
    idx.forEach((m, i) => {
      for (const [rule, n] of source.get(m) ?? []) (rules[rule] ??= new Array(minutes).fill(0))[i] = n;
    });
    return { minutes: idx.map((m) => m * MINUTE), rules };
  }

  private trim(minute: number): void {
    const keep = this.opts.minutes ?? 60;
    for (const map of [this.blocks, this.wouldBlocks]) {
      if (map.size <= keep) continue;
      for (const m of map.keys()) if (m <= minute - keep) map.delete(m);
    }
  }
}

function bump(map: Map<number, Map<string, number>>, minute: number, rule: string): void {
  let m = map.get(minute);
  if (!m) { m = new Map(); map.set(minute, m); }
  m.set(rule, (m.get(rule) ?? 0) + 1);
}
