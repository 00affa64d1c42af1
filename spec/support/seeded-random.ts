// Random schedules in tests come from a seed that the run prints, so a
// failure replays exactly: PAYG_TEST_SEED=<seed> npm test.

/** The run's seed: PAYG_TEST_SEED when set, otherwise a fresh one. */
export function testSeed(): number {
  const given = process.env.PAYG_TEST_SEED;
  if (given !== undefined && given !== '') {
    const seed = Number(given);
    if (!Number.isInteger(seed) || seed < 0 || seed >= 2 ** 32) throw new Error(`PAYG_TEST_SEED: expected an integer 0…${2 ** 32 - 1}, got ${given}`);
    return seed;
  }
  return Math.floor(Math.random() * 2 ** 32);
}

/** mulberry32: a tiny PRNG, uniform in [0, 1), the same sequence for the same seed. */
export function seededRandom(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** A seeded generator for one spec, with its seed printed where the test output shows it. */
export function seededFor(spec: string): { seed: number; random: () => number } {
  const seed = testSeed();
  process.stdout.write(`      [${spec}] random schedule seed ${seed} (replay: PAYG_TEST_SEED=${seed})\n`);
  return { seed, random: seededRandom(seed) };
}
