// The one rule for tests that need something from outside Node (redis-server, nginx, chromium,
// PyJWT, ...): when it is missing, the test is skipped with the reason, so tap counts a skip and
// prints why, except when the CI environment variable is set (any non-empty value), where a missing
// prerequisite is a failure: CI installs every one of them (scripts/ensure-*.sh), so a skip there
// would be a check that silently never ran. Never report a missing prerequisite as a pass.
import type { TestContext } from '../helper.js'

/** True when CI is set to anything but the empty string (GitHub's `true`, GitLab's `true`, `1`...). */
export const IN_CI = (process.env.CI ?? '') !== ''

export interface Skippable extends TestContext {
  fail: (message: string) => unknown
  /** tap's t.test(name, options, fn): with `{ skip: reason }` it reports a skipped test. */
  test: (name: string, options: { skip: string }, fn: () => void) => unknown
}

/**
 * Reports a missing prerequisite on `t`: a skipped test ("prerequisite missing # SKIP <reason>")
 * here, a failure under CI. The caller then does not run what needed it.
 */
export function skipOrFail (t: Skippable, reason: string): void {
  if (IN_CI) t.fail(`${reason} (CI is set: a missing prerequisite is a failure, not a skip)`)
  else t.test('prerequisite missing', { skip: reason }, () => {})
}

/**
 * Options for `t.test(name, requires(t, missing), fn)`: the test runs when `missing` is undefined;
 * otherwise it is skipped with that reason, and under CI a failure is reported on `t` as well.
 */
export function requires (t: Skippable, missing: string | undefined): { skip: string | false } {
  if (missing === undefined) return { skip: false }
  if (IN_CI) t.fail(`${missing} (CI is set: a missing prerequisite is a failure, not a skip)`)
  return { skip: missing }
}
