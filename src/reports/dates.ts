// The three date syntaxes relayd accepts (chrono 0.4 parsers), each returning the date normalised the way
// relayd serialises a DateTime<FixedOffset> (`2018-08-24T15:55:01+00:00`, fraction only when non-zero):
//  * parseRfc3339 — DateTime::parse_from_rfc3339 (run log line timestamps, v1 file names)
//  * parseRelaxedRfc3339 — chrono's `%+` (v2 file names)
//  * parseStartDate — `%Y-%m-%d %H:%M:%S%z` (report start dates)
// All work on a slice [start, end) of a larger string to avoid substring allocations in the run log parser.

interface Fields {
  year: number;
  month: number;
  day: number;
  hour: number;
  minute: number;
  second: number;
  nano: number;
  offset: number; // seconds east of UTC
}

const MINUS_SIGN = 0x2212; // chrono accepts U+2212 in offsets

export function parseRfc3339(s: string, start = 0, end = s.length): string | undefined {
  const c = new Cursor(s, start, end);
  const year = c.digits(4, 4);
  if (year === undefined || !c.char(0x2d)) return undefined;
  const month = c.digits(2, 2);
  if (month === undefined || !c.char(0x2d)) return undefined;
  const day = c.digits(2, 2);
  if (day === undefined) return undefined;
  if (!(c.char(0x54) || c.char(0x74) || c.char(0x20))) return undefined; // T t space
  const hour = c.digits(2, 2);
  if (hour === undefined || !c.char(0x3a)) return undefined;
  const minute = c.digits(2, 2);
  if (minute === undefined || !c.char(0x3a)) return undefined;
  const second = c.digits(2, 2);
  if (second === undefined) return undefined;
  let nano = 0;
  if (c.char(0x2e)) {
    const fraction = c.nanoseconds();
    if (fraction === undefined) return undefined;
    nano = fraction;
  }
  let offset: number | undefined;
  if (c.char(0x5a) || c.char(0x7a)) offset = 0; // Z z
  else offset = c.offset((cur) => cur.char(0x3a));
  if (offset === undefined || !c.atEnd()) return undefined;
  if (Math.abs(offset) > (23 * 60 + 59) * 60) return undefined;
  const fields = { year, month, day, hour, minute, second, nano, offset };
  // fast path: what agents write (`2019-05-11T12:58:13+00:00`) is already in normal form
  const sign = s.charCodeAt(start + 19);
  if (end - start === 25 && s.charCodeAt(start + 10) === 0x54 && (sign === 0x2b || (sign === 0x2d && offset !== 0))) {
    return isValid(fields) ? s.slice(start, end) : undefined;
  }
  return normalise(fields);
}

export function parseRelaxedRfc3339(s: string, start = 0, end = s.length): string | undefined {
  const c = new Cursor(s, start, end);
  const year = c.year();
  if (year === undefined) return undefined;
  c.skipSpace();
  if (!c.char(0x2d)) return undefined;
  const month = c.number(2);
  if (month === undefined) return undefined;
  c.skipSpace();
  if (!c.char(0x2d)) return undefined;
  const day = c.number(2);
  if (day === undefined) return undefined;
  if (!(c.char(0x54) || c.char(0x74) || c.char(0x20))) return undefined;
  const hour = c.number(2);
  if (hour === undefined) return undefined;
  c.skipSpace();
  if (!c.char(0x3a)) return undefined;
  const minute = c.number(2);
  if (minute === undefined) return undefined;
  c.skipSpace();
  if (!c.char(0x3a)) return undefined;
  const second = c.number(2);
  if (second === undefined) return undefined;
  let nano = 0;
  if (c.char(0x2e)) {
    const fraction = c.nanoseconds();
    if (fraction === undefined) return undefined;
    nano = fraction;
  }
  c.skipSpace();
  let offset: number | undefined;
  if (c.caseInsensitive('UTC')) offset = 0;
  else if (c.char(0x5a) || c.char(0x7a)) offset = 0;
  else offset = c.offset((cur) => cur.colonOrSpace());
  if (offset === undefined || !c.atEnd()) return undefined;
  return normalise({ year, month, day, hour, minute, second, nano, offset });
}

export function parseStartDate(s: string, start = 0, end = s.length): string | undefined {
  const c = new Cursor(s, start, end);
  c.skipSpace();
  const year = c.year();
  if (year === undefined || !c.char(0x2d)) return undefined;
  c.skipSpace();
  const month = c.number(2);
  if (month === undefined || !c.char(0x2d)) return undefined;
  c.skipSpace();
  const day = c.number(2);
  if (day === undefined) return undefined;
  c.skipSpace(); // the space of the format matches any run of white space, even none
  c.skipSpace();
  const hour = c.number(2);
  if (hour === undefined || !c.char(0x3a)) return undefined;
  c.skipSpace();
  const minute = c.number(2);
  if (minute === undefined || !c.char(0x3a)) return undefined;
  c.skipSpace();
  const second = c.number(2);
  if (second === undefined) return undefined;
  c.skipSpace();
  const offset = c.offset((cur) => cur.colonOrSpace());
  if (offset === undefined || !c.atEnd()) return undefined;
  return normalise({ year, month, day, hour, minute, second, nano: 0, offset });
}

class Cursor {
  constructor(
    private readonly s: string,
    private pos: number,
    private readonly end: number,
  ) {}

  atEnd(): boolean {
    return this.pos === this.end;
  }

  char(code: number): boolean {
    if (this.pos < this.end && this.s.charCodeAt(this.pos) === code) {
      this.pos++;
      return true;
    }
    return false;
  }

  caseInsensitive(word: string): boolean {
    if (this.end - this.pos < word.length) return false;
    if (this.s.slice(this.pos, this.pos + word.length).toUpperCase() !== word) return false;
    this.pos += word.length;
    return true;
  }

  /** between min and max ASCII digits (chrono scan::number) */
  digits(min: number, max: number): number | undefined {
    let value = 0;
    let count = 0;
    while (count < max && this.pos < this.end) {
      const d = this.s.charCodeAt(this.pos) - 0x30;
      if (d < 0 || d > 9) break;
      value = value * 10 + d;
      this.pos++;
      count++;
    }
    return count >= min ? value : undefined;
  }

  /** a numeric strftime field: leading white space skipped, 1..width digits */
  number(width: number): number | undefined {
    this.skipSpace();
    return this.digits(1, width);
  }

  /** %Y: 1–4 digits, or a sign followed by any number of digits */
  year(): number | undefined {
    this.skipSpace();
    if (this.char(0x2d)) {
      const v = this.digits(1, 9);
      return v === undefined ? undefined : -v;
    }
    if (this.char(0x2b)) return this.digits(1, 9);
    return this.digits(1, 4);
  }

  /** fraction digits: 1 or more, the first nine count */
  nanoseconds(): number | undefined {
    const from = this.pos;
    let value = 0;
    while (this.pos < this.end) {
      const d = this.s.charCodeAt(this.pos) - 0x30;
      if (d < 0 || d > 9) break;
      if (this.pos - from < 9) value = value * 10 + d;
      this.pos++;
    }
    const count = this.pos - from;
    if (count === 0) return undefined;
    for (let i = count; i < 9; i++) value *= 10;
    return value;
  }

  skipSpace(): void {
    while (this.pos < this.end && isWhiteSpace(this.s.charCodeAt(this.pos))) this.pos++;
  }

  colonOrSpace(): boolean {
    while (this.pos < this.end) {
      const c = this.s.charCodeAt(this.pos);
      if (c !== 0x3a && !isWhiteSpace(c)) break;
      this.pos++;
    }
    return true;
  }

  /** chrono scan::timezone_offset: sign, 2-digit hours, separator, 2-digit minutes (< 60) */
  offset(separator: (cursor: Cursor) => boolean): number | undefined {
    let negative: boolean;
    if (this.char(0x2b)) negative = false;
    else if (this.char(0x2d) || this.char(MINUS_SIGN)) negative = true;
    else return undefined;
    const hours = this.digits(2, 2);
    if (hours === undefined || !separator(this)) return undefined;
    const minutes = this.digits(2, 2);
    if (minutes === undefined || minutes >= 60) return undefined;
    const seconds = hours * 3600 + minutes * 60;
    return negative ? -seconds : seconds;
  }
}

function isWhiteSpace(c: number): boolean {
  return (
    (c >= 0x09 && c <= 0x0d) ||
    c === 0x20 ||
    c === 0x85 ||
    c === 0xa0 ||
    c === 0x1680 ||
    (c >= 0x2000 && c <= 0x200a) ||
    c === 0x2028 ||
    c === 0x2029 ||
    c === 0x202f ||
    c === 0x205f ||
    c === 0x3000
  );
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

function isLeapYear(year: number): boolean {
  return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
}

function isValid(f: Fields): boolean {
  if (f.month < 1 || f.month > 12 || f.day < 1) return false;
  const days = f.month === 2 && isLeapYear(f.year) ? 29 : DAYS_IN_MONTH[f.month - 1]!;
  if (f.day > days) return false;
  if (f.hour > 23 || f.minute > 59 || f.second > 60) return false; // 60: leap second, kept as is
  if (Math.abs(f.offset) >= 86400) return false;
  return Math.abs(f.year) <= 262143; // chrono's NaiveDate range
}

function normalise(f: Fields): string | undefined {
  if (!isValid(f)) return undefined;

  const year =
    f.year >= 0 && f.year <= 9999 ? pad(f.year, 4) : (f.year < 0 ? '-' : '+') + pad(Math.abs(f.year), 4);
  let fraction = '';
  if (f.nano !== 0) {
    if (f.nano % 1_000_000 === 0) fraction = '.' + pad(f.nano / 1_000_000, 3);
    else if (f.nano % 1000 === 0) fraction = '.' + pad(f.nano / 1000, 6);
    else fraction = '.' + pad(f.nano, 9);
  }
  const sign = f.offset < 0 ? '-' : '+';
  const offset = Math.abs(f.offset);
  return (
    `${year}-${pad(f.month, 2)}-${pad(f.day, 2)}T${pad(f.hour, 2)}:${pad(f.minute, 2)}:${pad(f.second, 2)}${fraction}` +
    `${sign}${pad(Math.floor(offset / 3600), 2)}:${pad(Math.floor(offset / 60) % 60, 2)}`
  );
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}
