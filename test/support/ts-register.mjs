// Loads TypeScript in test processes (.taprc `node-arg`): registers ts-hooks.mjs, which strips the
// types of each .ts file with SWC as Node loads it. Type-checking is `npm run typecheck`, not this.
import { register } from 'node:module'

register('./ts-hooks.mjs', import.meta.url)
