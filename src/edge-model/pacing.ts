/**
 * Keeps the edge model from holding the isolate's one thread for seconds at a time.
 *
 * onnxruntime-web runs on one wasm thread and its `session.run` resolves through microtasks only, so
 * a whole generation used to run as one uninterrupted turn of workerd's event loop. While the loop
 * is stuck nothing else is served, and its timer clock stands still: when the response was finally
 * written, workerd armed the keep-alive timeout of the connection from the stale clock and closed
 * the connection at once, so the next request on it failed (docs/design-notes.md, "Requests after a
 * long completion"). So every forward pass now runs on one compute lane per isolate: one pass at a
 * time, each started from a fresh timer (workerd polls its sockets and advances its clock before a
 * timer fires), and long prompts are prefilled in pieces of a few seconds each. A yield alone is not
 * enough: timers that expire in the same poll fire back to back, so several requests' passes would
 * again run in one stretch without a clock update.
 */

/**
 * Prompt tokens per prefill piece. A fixed count, not one derived from measured speed, so that the
 * same request always computes the same pieces (and the same bits) whatever the machine's load. At
 * ~0.5-0.9 s per ort call plus ~25 ms per token (2-core container), a piece holds the thread for
 * 2-3 s: under workerd's 5 s keep-alive timeout, yet large enough to amortize ort's fixed cost.
 */
export const PREFILL_PIECE_TOKENS = 96;

/**
 * Pause between two passes, ms. A quick request (a model list, a session read) makes a few storage
 * round trips, and each one's answer can only be handled between passes: a few ms of room lets such
 * a request finish in one gap instead of waiting one pass per round trip when storage answers within
 * it (local KV/R2 answer in 1-3 ms on an idle machine). Costs <1% of a pass.
 */
export const LANE_GAP_MS = 5;

/**
 * Gives the event loop a turn of at least `ms`: pending I/O, timers and other requests run before
 * this resolves. `scheduler.wait` is workerd's timer; outside workerd setTimeout does the same.
 */
export function yieldToEventLoop(ms = 0): Promise<void> {
  const s = (globalThis as { scheduler?: { wait?: (ms: number) => Promise<void> } }).scheduler;
  return s?.wait ? s.wait(ms) : new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Splits `count` prompt tokens into prefill pieces of PREFILL_PIECE_TOKENS, the last one possibly shorter.
 *
 * @example
 * ```ts
 * prefillPieces(200) // [96, 96, 8]
 * ```
 */
export function prefillPieces(count: number): number[] {
  const out: number[] = [];
  for (let left = count; left > 0; left -= PREFILL_PIECE_TOKENS) out.push(Math.min(PREFILL_PIECE_TOKENS, left));
  return out;
}

let lane: Promise<unknown> = Promise.resolve();

/**
 * Runs `pass` when every pass queued before it has finished, after a turn of the event loop; returns
 * its result and how long it held the thread (ms, as workerd's clock saw it).
 */
export function onComputeLane<T>(pass: () => Promise<T>): Promise<{ value: T; ms: number }> {
  const run = lane.then(async () => {
    await yieldToEventLoop(LANE_GAP_MS); // armed after the previous pass, so it fires after a poll
    const t0 = Date.now();
    const value = await pass();
    await yieldToEventLoop(); // the clock moves only at I/O: read it again after a poll
    return { value, ms: Date.now() - t0 };
  });
  lane = run.catch(() => {});
  return run;
}
