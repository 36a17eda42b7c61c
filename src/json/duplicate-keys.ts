// Duplicate member names in a JSON text (RFC 8259 §4: "names SHOULD be unique"; parsers differ on
// which one wins). POST /call authorizes the body as JSON.parse reads it (the last of a repeated
// name wins) and forwards the exact bytes, which a tool's parser may read differently (the first
// wins in some), so a body with a repeated name anywhere is refused before anything is authorized.
// A scanner over text that JSON.parse has already accepted: it only tracks strings and nesting.

/** The first repeated member name in a valid JSON text, or undefined. Names compare after unescaping. */
export function duplicateKey (text: string): string | undefined {
  // One set of names per open object; null for an open array.
  const stack: Array<Set<string> | null> = []
  let expectName = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (c === 0x22) { // '"': a string; find its end, skipping escapes
      let j = i + 1
      let escaped = false
      while (j < text.length) {
        const d = text.charCodeAt(j)
        if (d === 0x5c) { escaped = true; j += 2; continue }
        if (d === 0x22) break
        j++
      }
      const top = stack[stack.length - 1]
      if (expectName && top !== undefined && top !== null) {
        const raw = text.slice(i, j + 1)
        const name = escaped ? JSON.parse(raw) as string : raw.slice(1, -1)
        if (top.has(name)) return name
        top.add(name)
        expectName = false
      }
      i = j
    } else if (c === 0x7b) { // '{'
      stack.push(new Set())
      expectName = true
    } else if (c === 0x5b) { // '['
      stack.push(null)
      expectName = false
    } else if (c === 0x7d || c === 0x5d) { // '}' ']'
      stack.pop()
      expectName = false
    } else if (c === 0x2c) { // ',': in an object, a name comes next
      const top = stack[stack.length - 1]
      expectName = top !== undefined && top !== null
    }
  }
  return undefined
}
