// on-exit-leak-free ships no types: what Tollgate uses (it holds `obj` weakly and calls
// `fn(obj, event)` at the process event).
declare module 'on-exit-leak-free' {
  type Handler<T extends object> = (obj: T, event: 'exit' | 'beforeExit') => void
  const onExit: {
    register: <T extends object>(obj: T, fn: Handler<T>) => void
    unregister: (obj: object) => void
  }
  export default onExit
}
