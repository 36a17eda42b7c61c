// Path safety for /call/:tool/*: turns the raw (still percent-encoded) rest of the caller's path
// into the upstream path under the tool's base, and refuses anything that could leave that base.
// Works on the raw request URL on purpose: Fastify's decoded `*` param turns `%2e%2e/`, `..%2f` and
// `..\` into `../` (LIBRARIES.md), and `new URL()` would then resolve them. Never re-encodes what
// the caller sent, so the upstream sees the caller's own bytes.
import { BadPath } from '../errors.js'
import type { Tool } from '../tools/index.js'

// RFC 3986 §3.3 pchar plus '/': unreserved, pct-encoded, sub-delims, ':' and '@'.
const PATH_CHARS = /^[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*$/
// Percent-encodings that would smuggle a separator, a dot segment's meaning or a control byte.
const FORBIDDEN_ESCAPES = /%(?:2f|5c|0[0-9a-f]|1[0-9a-f]|7f)/i
const SCHEME = /^[A-Za-z][A-Za-z0-9+.-]*:/

export interface SplitUrl {
  /** The raw `:tool` segment. */
  tool: string
  /** The raw rest of the path after `/call/<tool>/` ('' when none). */
  rest: string
  /** The raw query string including its '?', or ''. */
  search: string
}

/** Splits a raw `/call/<tool>/<rest>?<query>` request URL without decoding anything. */
export function splitCallUrl (rawUrl: string): SplitUrl {
  const q = rawUrl.indexOf('?')
  const path = q === -1 ? rawUrl : rawUrl.slice(0, q)
  const search = q === -1 ? '' : rawUrl.slice(q)
  if (!path.startsWith('/call/')) throw new BadPath()
  const afterPrefix = path.slice('/call/'.length)
  const slash = afterPrefix.indexOf('/')
  if (slash === -1) return { tool: afterPrefix, rest: '', search }
  return { tool: afterPrefix.slice(0, slash), rest: afterPrefix.slice(slash + 1), search }
}

/** How many percent-decodings of a segment are checked: a server that decodes twice (or thrice) sees these. */
const DECODE_LEVELS = 3

/**
 * A segment some server would take as a dot segment: `.` or `..` once matrix parameters are cut
 * (`..;x`: Tomcat, Jetty, Spring), trailing dots and spaces trimmed (`...`, `.. `: IIS and
 * Windows), and compatibility forms folded (`．．`, full-width dots: NFKC).
 */
function isDotLike (segment: string): boolean {
  const semicolon = segment.indexOf(';')
  const path = (semicolon === -1 ? segment : segment.slice(0, semicolon)).normalize('NFKC')
  return path !== '' && /^[.\s]+$/.test(path)
}

/** Checks the raw rest of a path; throws BadPath (400) for anything that could leave the base. */
export function checkRest (rest: string): void {
  if (rest === '') return
  if (!PATH_CHARS.test(rest)) throw new BadPath('the path contains characters that are not allowed (backslash, space or control)')
  if (FORBIDDEN_ESCAPES.test(rest)) throw new BadPath('the path contains an encoded separator or control character')
  if (SCHEME.test(rest)) throw new BadPath('absolute URLs are not allowed in the path')
  const segments = rest.split('/')
  segments.forEach((raw, i) => {
    // An empty segment is `//` (or a leading '/'), which could start an authority; a trailing
    // slash is fine.
    if (raw === '' && i !== segments.length - 1) throw new BadPath('empty path segments (//) are not allowed')
    if (isDotLike(raw)) throw new BadPath('dot segments are not allowed in the path')
    // Each further decoding a server might apply (`%252e%252e` is `..` to one that decodes twice):
    // no level may be a dot segment or hold a separator or control character.
    let segment = raw
    for (let level = 1; level <= DECODE_LEVELS && segment.includes('%'); level++) {
      try {
        segment = decodeURIComponent(segment)
      } catch {
        if (level === 1) throw new BadPath('malformed percent-encoding in the path')
        break // a literal '%' in the decoded text: what a server that decodes again would refuse too
      }
      if (isDotLike(segment)) throw new BadPath('dot segments are not allowed in the path')
      if (/[/\\\x00-\x1f\x7f]/.test(segment)) throw new BadPath('the path contains an encoded separator or control character')
    }
  })
}

/**
 * The upstream path and query for a pass-through call (origin-relative, as undici's `path`).
 * Asserts after building it that the URL keeps the tool's origin and path prefix unchanged.
 */
export function upstreamPath (tool: Tool, rest: string, search: string): string {
  checkRest(rest)
  const path = rest === '' ? (tool.basePath === '' ? '/' : tool.basePath) : `${tool.basePath}/${rest}`
  const built = new URL(path + search, tool.origin)
  const prefixOk = tool.basePath === '' || built.pathname === tool.basePath || built.pathname.startsWith(tool.basePath + '/')
  // `pathname !== path` means URL parsing normalised something (a dot segment slipped through).
  if (built.origin !== tool.origin || !prefixOk || built.pathname !== path) throw new BadPath()
  return path + search
}
