// relayd's duration syntax (spec-relayd.md §2.2): an integer is seconds, a string is a humantime
// sequence of <number><unit> tokens. Returns milliseconds, or undefined when not a duration.

const unitMs: ReadonlyMap<string, number> = new Map(
  (
    [
      [['nsec', 'ns', 'nanos'], 1e-6],
      [['usec', 'us', 'µs', 'micros'], 1e-3],
      [['msec', 'ms', 'millis'], 1],
      [['seconds', 'second', 'secs', 'sec', 's'], 1_000],
      [['minutes', 'minute', 'mins', 'min', 'm'], 60_000],
      [['hours', 'hour', 'hrs', 'hr', 'h'], 3_600_000],
      [['days', 'day', 'd'], 86_400_000],
      [['weeks', 'week', 'wks', 'wk', 'w'], 604_800_000],
      [['months', 'month', 'M'], 2_630_016_000],
      [['years', 'year', 'yrs', 'yr', 'y'], 31_557_600_000],
    ] as const
  ).flatMap(([names, ms]) => names.map((name) => [name, ms] as const)),
);

const token = /^(\d+)\s*([a-zA-Zµ]+)\s*/;

export function parseDuration(value: unknown): number | undefined {
  if (typeof value === 'number' || typeof value === 'bigint') {
    const seconds = Number(value);
    return Number.isSafeInteger(seconds) && seconds >= 0 ? seconds * 1000 : undefined;
  }
  if (typeof value !== 'string') return undefined;
  let rest = value.trim();
  if (rest === '') return undefined;
  let total = 0;
  while (rest !== '') {
    const match = token.exec(rest);
    if (!match) return undefined;
    const factor = unitMs.get(match[2] ?? '');
    if (factor === undefined) return undefined;
    total += Number(match[1]) * factor;
    rest = rest.slice(match[0].length);
  }
  return Number.isSafeInteger(Math.round(total)) ? Math.round(total) : undefined;
}

export const durationExpectation =
  'a duration such as "10s", "30min 20s", "1day" or an integer number of seconds';
