// Waiting in tests: poll a condition every 10 ms instead of sleeping a guess.

/** Resolves once `check` holds; throws `what` after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, ms = 3000, what = 'condition not met in time'): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(what);
    await new Promise((r) => setTimeout(r, 10));
  }
}
