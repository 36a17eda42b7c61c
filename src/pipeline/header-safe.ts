// Values that go into HTTP headers (X-Auth-*, X-Auth-Subject upstream) come from token claims:
// printable ASCII only, so no CR/LF or control character can split or forge a header.
import { InvalidToken } from '../errors.js'

const HEADER_SAFE = /^[\x20-\x7e]*$/

export function isHeaderSafe (value: string): boolean {
  return HEADER_SAFE.test(value)
}

/** A header-safe claim value, or InvalidToken. */
export function headerSafe (value: string, what: string): string {
  if (!isHeaderSafe(value)) throw new InvalidToken(`claim ${what} cannot be carried in a header`)
  return value
}
