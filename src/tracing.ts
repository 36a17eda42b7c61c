// Tracing (docs/tracing.md): OpenTelemetry spans for a request's way through the gateway, exported
// over OTLP/HTTP. Owns the tracer provider, the exporter and W3C trace-context propagation: a
// server span per request, a child span per pipeline stage and one for the upstream call, whose
// `traceparent` the tool receives. Explicit spans only: no global provider, no context manager,
// no instrumentation hooks into other modules. Knows nothing about Fastify.
//
// What a span may carry is fixed here: method, path (never the query), route, status, tool name,
// subject, client id, request id, upstream host and the error's code. Never a header value, a
// token, a secret or an error message (a message can echo input).
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, defaultTextMapGetter, defaultTextMapSetter, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api'
// The SDK (provider, exporter, samplers, propagator) is imported only when tracing is on
// (createTracing): with tracing off, which is the default, a process never loads it (about 0.2 s of
// CPU at every start, measured with `/usr/bin/time node -e "await import(...)"`).
import type { W3CTraceContextPropagator } from '@opentelemetry/core'
import type { TracerProvider, SpanExporter } from '@opentelemetry/sdk-trace'
import type { IncomingHttpHeaders } from 'node:http'
import type { Config } from './config.js'
import { TollgateError } from './errors.js'

export type TracingConfig = Config['tracing']

/** The pipeline stages that get a span of their own (the upstream call has its own, below). */
export type StageName = 'authenticate' | 'authorize' | 'limit' | 'idempotency' | 'meter' | 'relay' | 'settle'

/** How long closing the app waits for the last spans to be sent. */
const SHUTDOWN_TIMEOUT_MS = 5_000

/**
 * Where spans are sent, or undefined when tracing is off. The base endpoint gets `/v1/traces`
 * appended to its path, as the OTLP exporter specification says for OTEL_EXPORTER_OTLP_ENDPOINT.
 */
export function tracesUrl (config: TracingConfig): string | undefined {
  if (!config.enabled) return undefined
  if (config.otlpTracesEndpoint !== undefined) return config.otlpTracesEndpoint
  if (config.otlpEndpoint === undefined) return undefined
  const url = new URL(config.otlpEndpoint)
  url.pathname = url.pathname.replace(/\/$/, '') + '/v1/traces'
  return url.href
}

/** An error's stable code, for a span: Tollgate's own code, Fastify's constant code, else internal_error. */
export function errorCode (err: unknown): string {
  if (err instanceof TollgateError) return err.code
  const e = err as { code?: unknown, statusCode?: unknown } | null
  if (typeof e?.code === 'string' && /^[A-Z0-9_]{1,64}$/.test(e.code) && typeof e.statusCode === 'number' && e.statusCode < 500) return e.code
  return 'internal_error'
}

export interface TracingOptions {
  /** Replaces the OTLP exporter (tests of this module alone). */
  exporter?: SpanExporter
}

/** The request as the HTTP layer saw it, for its server span. */
export interface IncomingRequest {
  method: string
  /** The matched route pattern (`/call/:tool/*`), undefined when no route matched. */
  route: string | undefined
  /** The request target; only its path is recorded. */
  url: string
  headers: IncomingHttpHeaders
}

/** What is known of the request once it is answered, for its server span. */
export interface Outcome {
  statusCode: number
  requestId: string
  tool?: string | undefined
  sub?: string | undefined
  clientId?: string | undefined
}

/** The OpenTelemetry SDK's parts Tracing is built from, imported when tracing is on. */
async function loadSdk () {
  const [{ W3CTraceContextPropagator }, { OTLPTraceExporter }, { defaultResource, resourceFromAttributes }, sdk] = await Promise.all([
    import('@opentelemetry/core'),
    import('@opentelemetry/exporter-trace-otlp-http'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/sdk-trace')
  ])
  const { AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider } = sdk
  return { W3CTraceContextPropagator, OTLPTraceExporter, defaultResource, resourceFromAttributes, AlwaysOnSampler, BatchSpanProcessor, ParentBasedSampler, TraceIdRatioBasedSampler, TracerProvider }
}
type Sdk = Awaited<ReturnType<typeof loadSdk>>

export class Tracing {
  readonly #provider: TracerProvider
  readonly #tracer: Tracer
  readonly #propagator: W3CTraceContextPropagator
  #closed: Promise<void> | undefined

  constructor (config: TracingConfig, url: string, options: TracingOptions, sdk: Sdk) {
    const { OTLPTraceExporter, TracerProvider, defaultResource, resourceFromAttributes, ParentBasedSampler, AlwaysOnSampler, TraceIdRatioBasedSampler, BatchSpanProcessor, W3CTraceContextPropagator } = sdk
    this.#propagator = new W3CTraceContextPropagator()
    const exporter = options.exporter ?? new OTLPTraceExporter({ url })
    const ratio = config.sampleRatio
    this.#provider = new TracerProvider({
      resource: defaultResource().merge(resourceFromAttributes({ 'service.name': config.serviceName })),
      // A caller's sampled flag is followed, so one trace is all there or all absent; the ratio
      // decides for traces that start here.
      sampler: new ParentBasedSampler({ root: ratio === undefined || ratio >= 1 ? new AlwaysOnSampler() : new TraceIdRatioBasedSampler(ratio) }),
      spanProcessors: [new BatchSpanProcessor({ exporter })]
    })
    this.#tracer = this.#provider.getTracer('tollgate')
  }

  /** Starts the server span of a request, as a child of the caller's `traceparent` when it sent one. */
  startRequest (request: IncomingRequest): RequestTrace {
    const parent = request.headers.traceparent !== undefined
      ? this.#propagator.extract(ROOT_CONTEXT, request.headers, defaultTextMapGetter)
      : ROOT_CONTEXT
    const q = request.url.indexOf('?')
    const attributes: Attributes = {
      'http.request.method': request.method,
      'url.path': q === -1 ? request.url : request.url.slice(0, q)
    }
    if (request.route !== undefined) attributes['http.route'] = request.route
    // OpenTelemetry's HTTP conventions: `{method} {route}`, the method alone when no route matched.
    const name = request.route === undefined ? request.method : `${request.method} ${request.route}`
    const span = this.#tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, parent)
    return new RequestTrace(this.#tracer, this.#propagator, span, trace.setSpan(parent, span))
  }

  /** Sends what is left and stops: called once when the app closes. */
  async shutdown (): Promise<void> {
    this.#closed ??= new Promise<void>(resolve => {
      const timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS)
      timer.unref()
      this.#provider.shutdown().catch(() => {}).finally(() => {
        clearTimeout(timer)
        resolve()
      })
    })
    await this.#closed
  }
}

/**
 * One request's spans. The routes call `enter` and `leave` around each stage (through `ctx.trace?`,
 * so with tracing off nothing runs and nothing is allocated); a refusal ends the open stage span
 * with the error's code; `finish` ends whatever is still open.
 */
export class RequestTrace {
  #stage: Span | undefined
  #upstream: Span | undefined
  #ended = false

  constructor (
    readonly tracer: Tracer,
    readonly propagator: W3CTraceContextPropagator,
    /** The server span. */
    readonly span: Span,
    /** The context whose active span is the server span: every child's parent. */
    readonly context: Context
  ) {}

  /** Starts a stage's span (ending the previous stage's, if still open). */
  enter (stage: StageName): void {
    if (this.#ended) return
    this.#stage?.end()
    this.#stage = this.tracer.startSpan(stage, { kind: SpanKind.INTERNAL }, this.context)
  }

  /** Ends the open stage's span. */
  leave (attributes?: Attributes): void {
    const stage = this.#stage
    if (stage === undefined) return
    if (attributes !== undefined) stage.setAttributes(attributes)
    stage.end()
    this.#stage = undefined
  }

  /**
   * Starts the upstream call's client span and writes its `traceparent` (and `tracestate`) into
   * the upstream request's headers, which header hygiene left without the caller's.
   */
  upstream (method: string, url: URL, headers: Record<string, string | string[]>): void {
    if (this.#ended) return
    const span = this.tracer.startSpan('upstream', {
      kind: SpanKind.CLIENT,
      attributes: {
        'http.request.method': method,
        'server.address': url.hostname,
        'server.port': url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port)
      }
    }, this.context)
    this.#upstream = span
    this.propagator.inject(trace.setSpan(this.context, span), headers, defaultTextMapSetter)
  }

  /** The upstream answered with this status (its span ends when the body is relayed). */
  upstreamAnswered (statusCode: number): void {
    const span = this.#upstream
    if (span === undefined) return
    span.setAttribute('http.response.status_code', statusCode)
    if (statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
  }

  /** The upstream call failed (no answer, or a body that broke off): its span ends with the code. */
  upstreamFailed (err: unknown): void {
    const span = this.#upstream
    if (span === undefined) return
    failSpan(span, errorCode(err))
    span.end()
    this.#upstream = undefined
  }

  /** Writes the server span's context into headers (a WebSocket handshake, which has no client span). */
  inject (headers: Record<string, string | string[]>): void {
    this.propagator.inject(this.context, headers, defaultTextMapSetter)
  }

  /** A refusal or failure: the open stage's span (or the upstream's) and the server span get its code. */
  fail (err: unknown): void {
    if (this.#ended) return
    const code = errorCode(err)
    const open = this.#stage ?? this.#upstream
    if (open !== undefined) {
      failSpan(open, code)
      open.end()
      if (open === this.#stage) this.#stage = undefined
      else this.#upstream = undefined
    }
    this.span.setAttribute('error.type', code)
  }

  /** Ends every span of the request, the server span last. */
  finish (outcome: Outcome): void {
    if (this.#ended) return
    this.#ended = true
    this.#stage?.end()
    this.#upstream?.end()
    const span = this.span
    span.setAttribute('http.response.status_code', outcome.statusCode)
    span.setAttribute('tollgate.request_id', outcome.requestId)
    if (outcome.tool !== undefined) span.setAttribute('tollgate.tool', outcome.tool)
    if (outcome.sub !== undefined) span.setAttribute('enduser.id', outcome.sub)
    if (outcome.clientId !== undefined) span.setAttribute('tollgate.client_id', outcome.clientId)
    // HTTP conventions: a server span is an error for 5xx only; a refusal carries error.type.
    if (outcome.statusCode >= 500) span.setStatus({ code: SpanStatusCode.ERROR })
    span.end()
  }
}

function failSpan (span: Span, code: string): void {
  span.setAttribute('error.type', code)
  span.setStatus({ code: SpanStatusCode.ERROR, message: code })
}

/** The app's tracing, or undefined when it is off (no endpoint, or disabled): then nothing is built. */
export async function createTracing (config: TracingConfig, options: TracingOptions = {}): Promise<Tracing | undefined> {
  const url = tracesUrl(config)
  if (url === undefined) return undefined
  return new Tracing(config, url, options, await loadSdk())
}
