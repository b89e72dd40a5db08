/** Reconnection timing. All durations in milliseconds. */
export interface BackoffOptions {
  /** Delay before the first retry, before jitter. Default 500. */
  initialDelayMs: number;
  /** Upper bound of any delay, jitter included. Default 30 000. */
  maxDelayMs: number;
  /** Growth factor per failed attempt. Default 2. */
  multiplier: number;
  /**
   * Fraction of the delay that is randomised, 0..1. With 0.5 the delay is
   * uniformly drawn from [base/2, base]: clients dropped together by a server
   * restart do not all come back in the same millisecond. Default 0.5.
   */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = {
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  multiplier: 2,
  jitter: 0.5,
};

/**
 * Delay before retry number `attempt` (0 for the first retry after a drop):
 * `min(max, initial * multiplier^attempt) * (1 - jitter + jitter * random())`.
 * `random` returns a number in [0, 1), like `Math.random`.
 */
export function backoffDelay(attempt: number, options: BackoffOptions, random: () => number): number {
  const jitter = Math.min(1, Math.max(0, options.jitter));
  const exp = options.initialDelayMs * Math.pow(options.multiplier, Math.max(0, attempt));
  const base = Math.min(options.maxDelayMs, Number.isFinite(exp) ? exp : options.maxDelayMs);
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(base * (1 - jitter + jitter * r));
}
