// A small typed client for supabase-jwt-service, with no dependencies, so it
// can be copied into any TypeScript front end (it is also served, transpiled,
// to the browser end-to-end test in tests/browser).
//
// Every call resolves (it never throws) to a discriminated union:
//
//   const result = await getName(accessToken)
//   if (result.ok) show(result.data.full_name)
//   else switch (result.error) { case 'invalid_token': ...; case 'network_error': ... }

/** Where the service listens when NEXT_PUBLIC_SERVICE_URL is not set. */
export const DEFAULT_SERVICE_URL = 'http://127.0.0.1:8080'

/** The `error` codes the service puts in its JSON error bodies (see CONTRACT.md). */
export const SERVICE_ERROR_CODES = [
  'missing_token', // 401: no Authorization header, or not Bearer
  'invalid_token', // 401: bad signature, expired, wrong aud/iss, not a UUID sub...
  'insufficient_scope', // 403: a valid key that is not a user's token (anon, service_role)
  'invalid_request', // 400: e.g. two Authorization headers
  'profile_not_found', // 404: token fine, but no public.users row for it yet
  'unavailable', // 503: database or key set unreachable; retry later
  'not_found', // 404: unknown route
  'method_not_allowed', // 405
  'invalid_body', // 422: PUT body not JSON or wrong shape
  'unsupported_media_type', // 415: PUT body not application/json
  'payload_too_large', // 413: PUT body over 16 KiB
] as const

export type ServiceErrorCode = (typeof SERVICE_ERROR_CODES)[number]

/** Failures that happen on this side of the wire, with no JSON from the service. */
export type ClientErrorCode =
  /** fetch() itself failed: service down, wrong URL, or the browser blocked it (CORS). */
  | 'network_error'
  /** The caller's AbortSignal fired. */
  | 'aborted'
  /** No answer within the timeout. */
  | 'timeout'
  /** An answer that is not the service's JSON (a proxy's HTML page, an unknown code...). */
  | 'unexpected_response'

export type NameBody = { full_name: string | null }

export type ServiceOk<T> = { ok: true; status: number; data: T }

export type ServiceFailure =
  | {
      ok: false
      /** The service answered with one of its documented error codes. */
      kind: 'service'
      status: number
      error: ServiceErrorCode
      message: string
      /** Seconds from Retry-After, when the service sent it and CORS exposes it. */
      retryAfter: number | null
    }
  | {
      ok: false
      kind: 'client'
      /** HTTP status when there was an answer (unexpected_response), else null. */
      status: number | null
      error: ClientErrorCode
      message: string
      retryAfter: null
    }

export type ServiceResult<T> = ServiceOk<T> | ServiceFailure

export type CallOptions = {
  /** Base URL of the service; defaults to NEXT_PUBLIC_SERVICE_URL, then DEFAULT_SERVICE_URL. */
  baseUrl?: string
  /** Cancel the request (e.g. when a React effect is cleaned up). */
  signal?: AbortSignal
  /** Give up after this many milliseconds (default 10 000). */
  timeoutMs?: number
  /** Swap in another fetch (tests, or a server-side fetch with caching options). */
  fetch?: typeof fetch
}

/** GET /name: the caller's full_name (null when the profile has none). */
export function getName(accessToken: string, options: CallOptions = {}): Promise<ServiceResult<NameBody>> {
  return call('GET', '/name', accessToken, undefined, options)
}

/** PUT /name: set (or, with null, clear) the caller's full_name. */
export function putName(
  accessToken: string,
  fullName: string | null,
  options: CallOptions = {},
): Promise<ServiceResult<NameBody>> {
  return call('PUT', '/name', accessToken, { full_name: fullName }, options)
}

/** The service URL this bundle was built with. */
export function serviceUrl(): string {
  let fromEnv: string | undefined
  try {
    // Next.js replaces this expression with a string at build time. Outside a
    // bundler (a plain <script type="module">) `process` does not exist.
    fromEnv = process.env.NEXT_PUBLIC_SERVICE_URL
  } catch {
    fromEnv = undefined
  }
  return (fromEnv || DEFAULT_SERVICE_URL).replace(/\/+$/, '')
}

export function isServiceErrorCode(value: unknown): value is ServiceErrorCode {
  return typeof value === 'string' && (SERVICE_ERROR_CODES as readonly string[]).includes(value)
}

/** What a person should read, and what they can do about it. */
export type ErrorAdvice = {
  /** One or two sentences in the person's words, no codes or jargon. */
  message: string
  /**
   * The technical cause, for whoever debugs it (shown in small print under `message`,
   * or only logged); null when `message` says it all.
   */
  detail: string | null
  /** 'sign_in': show a link to /login. 'retry': offer to try again. 'fix_input': let them edit. */
  action: 'sign_in' | 'retry' | 'fix_input' | 'none'
}

/** Turns any failure into words for people, plus the technical detail apart. */
export function describeFailure(failure: ServiceFailure, baseUrl: string = serviceUrl()): ErrorAdvice {
  if (failure.kind === 'client') {
    switch (failure.error) {
      case 'network_error':
        return {
          message: "Couldn't reach the service. Check your connection, then try again.",
          // A browser reports a refused origin exactly like a service that is down.
          detail:
            `No answer from ${baseUrl} (${failure.message}): it may be down, or it does not allow ` +
            `this site's origin (its CORS_ALLOWED_ORIGINS must include it).`,
          action: 'retry',
        }
      case 'timeout':
        return {
          message: 'The service is taking too long to answer. Try again in a moment.',
          detail: `${baseUrl}: ${failure.message}`,
          action: 'retry',
        }
      case 'aborted':
        return { message: 'The request was cancelled.', detail: null, action: 'none' }
      case 'unexpected_response':
        return {
          message: 'Something went wrong on our side. Try again in a moment.',
          detail: `Unexpected answer${failure.status ? ` (HTTP ${failure.status})` : ''}: ${failure.message}`,
          action: 'retry',
        }
    }
  }
  const technical = `${failure.status} ${failure.error}: ${failure.message}`
  switch (failure.error) {
    case 'missing_token':
    case 'invalid_token':
    case 'insufficient_scope':
      return { message: 'Your session expired, sign in again.', detail: technical, action: 'sign_in' }
    case 'profile_not_found':
      return {
        message:
          "No profile yet. You are signed in, but your account's profile has not been set up. " +
          'If you have just signed up, try again in a moment.',
        detail: `No public.users row for this account (${technical}).`,
        action: 'retry',
      }
    case 'unavailable':
      return {
        message:
          'The service is unavailable right now. Try again' +
          (failure.retryAfter ? ` in about ${failure.retryAfter} s.` : ' in a moment.'),
        detail: technical,
        action: 'retry',
      }
    case 'invalid_body':
      return {
        message: 'That name was not accepted. Use at most 200 characters, on one line.',
        detail: technical,
        action: 'fix_input',
      }
    case 'payload_too_large':
      return { message: 'That name is far too long.', detail: technical, action: 'fix_input' }
    case 'unsupported_media_type':
    case 'invalid_request':
    case 'not_found':
    case 'method_not_allowed':
      // The app sent something the service does not take: a bug here, not the person's doing.
      return { message: 'Something went wrong on our side.', detail: technical, action: 'none' }
  }
}

// Both routes answer with a NameBody; a route with another shape would take a
// validator argument here instead of isNameBody.
async function call(
  method: 'GET' | 'PUT',
  path: string,
  accessToken: string,
  body: unknown,
  options: CallOptions,
): Promise<ServiceResult<NameBody>> {
  const base = (options.baseUrl ?? serviceUrl()).replace(/\/+$/, '')
  const doFetch = options.fetch ?? fetch
  const timeoutMs = options.timeoutMs ?? 10_000

  // One controller that fires on the caller's signal or on our timeout.
  const controller = new AbortController()
  let timedOut = false
  const timer = setTimeout(() => {
    timedOut = true
    controller.abort()
  }, timeoutMs)
  const onCallerAbort = () => controller.abort()
  if (options.signal?.aborted) controller.abort()
  options.signal?.addEventListener('abort', onCallerAbort, { once: true })

  const headers: Record<string, string> = {
    Accept: 'application/json',
    Authorization: `Bearer ${accessToken}`,
  }
  if (body !== undefined) headers['Content-Type'] = 'application/json'

  let response: Response
  let text: string
  try {
    response = await doFetch(`${base}${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: controller.signal,
      // The token travels in the Authorization header, never in cookies.
      credentials: 'omit',
      cache: 'no-store',
    })
    text = await response.text()
  } catch (err) {
    if (timedOut) return clientFailure('timeout', null, `no answer within ${timeoutMs} ms`)
    if (controller.signal.aborted) return clientFailure('aborted', null, 'request aborted')
    // Browsers give the same TypeError for "connection refused" and for
    // "blocked by CORS", on purpose: a page may not tell them apart.
    return clientFailure('network_error', null, err instanceof Error ? err.message : String(err))
  } finally {
    clearTimeout(timer)
    options.signal?.removeEventListener('abort', onCallerAbort)
  }

  const json = parseJson(text)

  if (response.ok) {
    if (isNameBody(json)) return { ok: true, status: response.status, data: { full_name: json.full_name } }
    return clientFailure('unexpected_response', response.status, `unexpected body: ${text.slice(0, 200)}`)
  }

  if (isErrorBody(json) && isServiceErrorCode(json.error)) {
    return {
      ok: false,
      kind: 'service',
      status: response.status,
      error: json.error,
      message: json.message,
      retryAfter: parseRetryAfter(response.headers.get('Retry-After')),
    }
  }
  return clientFailure(
    'unexpected_response',
    response.status,
    isErrorBody(json) ? `${json.error}: ${json.message}` : `HTTP ${response.status}: ${text.slice(0, 200)}`,
  )
}

function clientFailure(error: ClientErrorCode, status: number | null, message: string): ServiceFailure {
  return { ok: false, kind: 'client', status, error, message, retryAfter: null }
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

function isNameBody(value: unknown): value is NameBody {
  if (typeof value !== 'object' || value === null || !('full_name' in value)) return false
  const name = (value as { full_name: unknown }).full_name
  return name === null || typeof name === 'string'
}

function isErrorBody(value: unknown): value is { error: string; message: string } {
  return (
    typeof value === 'object' &&
    value !== null &&
    typeof (value as { error?: unknown }).error === 'string' &&
    typeof (value as { message?: unknown }).message === 'string'
  )
}

function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null
  const seconds = Number.parseInt(value, 10)
  return Number.isFinite(seconds) && seconds >= 0 ? seconds : null
}
