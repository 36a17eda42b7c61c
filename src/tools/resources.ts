// The gateway and its tools as OAuth protected resources (CONTRACT §12): their resource URIs
// (`<publicUrl>/call/<tool>`), their RFC 9728 metadata documents and metadata URLs, and the RFC
// 8707 mapping from requested resource URIs to token audiences. Built once from the config; never
// talks to a tool, never decides who may call one (that is the pipeline's authorize stage).
import type { ToolConfig } from '../config.js'
import { OAuthError, ToolNotFound } from '../errors.js'

/** RFC 9728 §3: the well-known suffix of a protected resource's metadata. */
export const RESOURCE_METADATA_PATH = '/.well-known/oauth-protected-resource'

export interface ProtectedResourcesOptions {
  /** server.publicUrl, normalised by config.ts (no trailing slash). */
  publicUrl: string
  issuer: string
  tools: ReadonlyArray<Pick<ToolConfig, 'name' | 'audience' | 'scopes'>>
  /** The DPoP proof algorithms accepted, when DPoP is on (RFC 9449 §5.1); otherwise omitted. */
  dpopAlgorithms?: readonly string[] | undefined
}

export interface ResourceMetadata {
  resource: string
  authorization_servers: string[]
  scopes_supported: string[]
  bearer_methods_supported: string[]
  dpop_signing_alg_values_supported?: string[]
}

interface Entry {
  name: string
  audience: string
  uri: string
  metadataUrl: string
  metadata: ResourceMetadata
}

export class ProtectedResources {
  /** The gateway's own resource identifier: the public URL. */
  readonly resource: string
  /** Where the gateway's RFC 9728 document is published (RFC 9728 §3.1). */
  readonly metadataUrl: string
  /** The gateway's RFC 9728 document. */
  readonly metadata: ResourceMetadata
  /** Path prefixes under which the documents are served: '' and, when publicUrl has a path, that path. */
  readonly routePrefixes: readonly string[]
  readonly #byName = new Map<string, Entry>()
  readonly #byUri = new Map<string, Entry>()

  constructor (options: ProtectedResourcesOptions) {
    const url = new URL(options.publicUrl)
    const path = url.pathname.replace(/\/+$/, '')
    this.resource = url.origin + path
    // RFC 9728 §3.1: the well-known string goes between the host and the resource's path.
    const wellKnown = (resourcePath: string): string => url.origin + RESOURCE_METADATA_PATH + resourcePath
    this.metadataUrl = wellKnown(path)
    this.routePrefixes = path === '' ? [''] : ['', path]
    const common = {
      authorization_servers: [options.issuer],
      bearer_methods_supported: ['header'],
      ...(options.dpopAlgorithms !== undefined ? { dpop_signing_alg_values_supported: [...options.dpopAlgorithms] } : {})
    }
    const allScopes = new Set<string>()
    for (const tool of options.tools) {
      const uri = `${this.resource}/call/${tool.name}`
      for (const s of tool.scopes) allScopes.add(s)
      const entry: Entry = {
        name: tool.name,
        audience: tool.audience,
        uri,
        metadataUrl: wellKnown(`${path}/call/${tool.name}`),
        metadata: { resource: uri, ...common, scopes_supported: [...tool.scopes] }
      }
      this.#byName.set(tool.name, entry)
      this.#byUri.set(uri, entry)
    }
    this.metadata = { resource: this.resource, ...common, scopes_supported: [...allScopes] }
  }

  /** The resource URIs of every tool, in config order. */
  get toolResources (): string[] {
    return [...this.#byName.values()].map(e => e.uri)
  }

  /** The tool's RFC 9728 document, or ToolNotFound (404). */
  toolMetadata (name: string): ResourceMetadata {
    const entry = this.#byName.get(name)
    if (entry === undefined) throw new ToolNotFound(name)
    return entry.metadata
  }

  /** The metadata URL for a 401 challenge: the tool's when `name` is a tool, else the gateway's. */
  metadataUrlFor (name: unknown): string {
    return (typeof name === 'string' ? this.#byName.get(name)?.metadataUrl : undefined) ?? this.metadataUrl
  }

  /**
   * RFC 8707 §2: the audiences a token for these resource URIs carries. Each must be a tool's
   * resource URI exactly, whose audience is among `allowed`; anything else is invalid_target.
   */
  audiencesFor (resources: readonly string[], allowed: readonly string[]): string[] {
    const audiences: string[] = []
    for (const uri of resources) {
      const entry = this.#byUri.get(uri)
      if (entry === undefined) throw new OAuthError('invalid_target', `unknown resource: ${printable(uri)}`)
      if (!allowed.includes(entry.audience)) throw new OAuthError('invalid_target', `resource not allowed for this client: ${entry.uri}`)
      if (!audiences.includes(entry.audience)) audiences.push(entry.audience)
    }
    return audiences
  }
}

/** A refused value echoed in an error description: RFC 6749 §5.2 characters only, bounded. */
function printable (value: string): string {
  const clean = value.replace(/[^\x20\x21\x23-\x5b\x5d-\x7e]/g, '?')
  return clean.length > 200 ? clean.slice(0, 200) + '...' : clean
}
