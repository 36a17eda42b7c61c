// The key a client address is counted under by the per-IP limits. Owns one rule: an IPv6 client
// is counted by its network (`rateLimits.ipv6Prefix`, a /64 by default), because a host is
// usually given a whole /64 and can rotate through it at will; an IPv4 client, and an IPv4
// address written as IPv6 (`::ffff:a.b.c.d`, as a dual-stack socket reports it), is counted by
// its address. Pure: no I/O, no Fastify.
import { isIP } from 'node:net'

/**
 * `1.2.3.4` → `1.2.3.4`; `::ffff:1.2.3.4` → `1.2.3.4`; `2001:db8:1:2:a:b:c:d` with prefix 64 →
 * `2001:db8:1:2::/64`; a zone id (`fe80::1%eth0`) is dropped. Anything that is not an IP address
 * comes back unchanged, so it is still counted, under itself.
 */
export function limitKey (ip: string, ipv6Prefix: number): string {
  const zone = ip.indexOf('%')
  const address = zone === -1 ? ip : ip.slice(0, zone)
  const family = isIP(address)
  if (family === 4) return address
  if (family !== 6) return ip
  const groups = ipv6Groups(address)
  // ::ffff:0:0/96 is IPv4 (RFC 4291 §2.5.5.2): the same client as its IPv4 address.
  if (groups.slice(0, 5).every(g => g === 0) && groups[5] === 0xffff) {
    const [hi, lo] = [groups[6] as number, groups[7] as number]
    return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`
  }
  const prefix = Math.min(128, Math.max(0, Math.trunc(ipv6Prefix)))
  const masked = groups.map((g, i) => {
    const bits = Math.min(16, Math.max(0, prefix - i * 16))
    return bits === 0 ? 0 : g & (0xffff << (16 - bits)) & 0xffff
  })
  const text = formatIpv6(masked)
  return prefix === 128 ? text : `${text}/${prefix}`
}

/** The eight 16-bit groups of a valid IPv6 address (`isIP` said 6), an IPv4 tail included. */
function ipv6Groups (address: string): number[] {
  const parse = (part: string): number[] => {
    if (part === '') return []
    return part.split(':').flatMap(p => {
      if (!p.includes('.')) return [parseInt(p, 16)]
      const [a, b, c, d] = p.split('.').map(Number) as [number, number, number, number]
      return [(a << 8) | b, (c << 8) | d]
    })
  }
  const gap = address.indexOf('::')
  if (gap === -1) return parse(address)
  const head = parse(address.slice(0, gap))
  const tail = parse(address.slice(gap + 2))
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail]
}

/** RFC 5952 text: lowercase, no leading zeros, the longest run (2+) of zero groups as `::`. */
function formatIpv6 (groups: number[]): string {
  let best = -1
  let bestLength = 1
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) { i++; continue }
    let j = i
    while (j < 8 && groups[j] === 0) j++
    if (j - i > bestLength) { best = i; bestLength = j - i }
    i = j
  }
  const hex = groups.map(g => g.toString(16))
  if (best === -1) return hex.join(':')
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLength).join(':')}`
}
