// Module hooks that run TypeScript in test processes: a .ts file is transformed by @swc/core as it
// is loaded (types stripped, an inline source map for stack traces and coverage), and an import of
// `./x.js` that names the compiled file (NodeNext style) finds `./x.ts` when there is no `./x.js`.
//
// Why not @swc-node/register, which did this before: its loader also loads the TypeScript compiler
// and a resolver into every test process, about 1.5 CPU-seconds per process before the first test
// (measured: test/limit-key.test.ts took 2.5 CPU-s with it, 1.0 CPU-s with these hooks; a test
// that loads the whole app 7.7 and 5.5), times some seventy test files. The SWC options are the ones
// @swc-node/register derived from tsconfig.json (target ES2022, define semantics for class fields,
// class names kept), so the code that runs is the same.
//
// Two forms of the same two hooks: async for module.register() (Node 20, hooks on their own thread)
// and sync for module.registerHooks() (Node >= 22.15, hooks on the loading thread): ts-register.mjs
// picks one.
import { transformSync } from '@swc/core'
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

const SWC_OPTIONS = {
  jsc: {
    target: 'es2022',
    parser: { syntax: 'typescript', tsx: false, decorators: false, dynamicImport: true },
    transform: { useDefineForClassFields: true },
    keepClassNames: true,
    experimental: { keepImportAttributes: true }
  },
  module: { type: 'es6' },
  isModule: true,
  sourceMaps: 'inline',
  inlineSourcesContent: true,
  swcrc: false
}

/** `./x.js` → `./x.ts` when only the TypeScript file exists (a relative or file: specifier). */
function typescriptTwin (specifier, err) {
  const relative = /^(\.|\/|file:)/.test(specifier)
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !relative || !specifier.endsWith('.js')) throw err
  return `${specifier.slice(0, -'.js'.length)}.ts`
}

function isTypeScript (url) {
  return url.startsWith('file:') && url.endsWith('.ts')
}

function transform (source, url) {
  const filename = fileURLToPath(url)
  return { format: 'module', source: transformSync(source, { ...SWC_OPTIONS, filename }).code, shortCircuit: true }
}

export async function resolve (specifier, context, nextResolve) {
  try {
    return await nextResolve(specifier, context)
  } catch (err) {
    return await nextResolve(typescriptTwin(specifier, err), context)
  }
}

export async function load (url, context, nextLoad) {
  if (!isTypeScript(url)) return await nextLoad(url, context)
  return transform(await readFile(fileURLToPath(url), 'utf8'), url)
}

export function resolveSync (specifier, context, nextResolve) {
  try {
    return nextResolve(specifier, context)
  } catch (err) {
    return nextResolve(typescriptTwin(specifier, err), context)
  }
}

export function loadSync (url, context, nextLoad) {
  if (!isTypeScript(url)) return nextLoad(url, context)
  return transform(readFileSync(fileURLToPath(url), 'utf8'), url)
}
