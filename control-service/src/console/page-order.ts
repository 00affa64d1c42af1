// One page of a large list in order, without sorting the whole list: the
// members page of 100k customers needs rows [start, end) only. Two
// quickselect partitions bring those rows to their place, then only the page
// itself is sorted: O(n) comparisons on average instead of O(n log n).

export type Compare = (a: number, b: number) => number;

/** The indices 0..n-1 at ranks [start, end) under `compare` (a total order: no two rows equal), in order. */
export function pageOrder(n: number, compare: Compare, start: number, end: number): number[] {
  end = Math.min(end, n);
  if (start >= end) return [];
  // A page nearer the end is found from the end, with the order reversed.
  const fromEnd = start > n - end;
  const cmp: Compare = fromEnd ? (a, b) => compare(b, a) : compare;
  const [s, e] = fromEnd ? [n - end, n - start] : [start, end];
  const idx = new Int32Array(n);
  for (let i = 0; i < n; i++) idx[i] = i;
  if (e < n) partitionAt(idx, 0, n, e, cmp); // [0, e) now holds the e first
  if (s > 0) partitionAt(idx, 0, e, s, cmp); // [s, e) now holds the page
  const page = Array.from(idx.subarray(s, e)).sort(cmp);
  return fromEnd ? page.reverse() : page;
}

/** Rearranges a[lo, hi) so that a[k] is the element of rank k, with the smaller ones before it and the larger after. */
function partitionAt(a: Int32Array, lo: number, hi: number, k: number, cmp: Compare): void {
  while (hi - lo > 1) {
    const pivot = a[lo + Math.floor(Math.random() * (hi - lo))];
    let i = lo;
    let j = hi - 1;
    while (i <= j) {
      while (cmp(a[i], pivot) < 0) i++;
      while (cmp(a[j], pivot) > 0) j--;
      if (i <= j) { const t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
    }
    // Now a[lo, j] ≤ pivot ≤ a[i, hi), and anything between i and j is the pivot itself.
    if (k <= j) hi = j + 1;
    else if (k >= i) lo = i;
    else return;
  }
}
