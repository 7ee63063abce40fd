// A small typed client for the chat example (examples/chat, docs/chat.md), with
// no dependencies. POST /chat answers with server-sent events; EventSource
// cannot send an Authorization header, so this reads the stream from fetch()
// itself, and the token never goes in a URL. (It is also served, transpiled,
// to the browser end-to-end test in tests/browser.)

import { isServiceErrorCode, serviceUrl } from './service'

/** Where the chat service listens: NEXT_PUBLIC_CHAT_URL, else the service's URL. */
export function chatUrl(): string {
  let fromEnv: string | undefined
  try {
    // Replaced by Next.js at build time; `process` does not exist in a plain module.
    fromEnv = process.env.NEXT_PUBLIC_CHAT_URL
  } catch {
    fromEnv = undefined
  }
  return (fromEnv || serviceUrl()).replace(/\/+$/, '')
}

export type Usage = { prompt_tokens: number; completion_tokens: number }

export type ChatFailure = {
  ok: false
  /** HTTP status, or null when no answer arrived (network, aborted). */
  status: number | null
  /** The service's error code, `rate_limited` included, or a client-side one. */
  error: string
  message: string
  /** Seconds to wait (Retry-After) for 429 and 503. */
  retryAfter: number | null
  /** The conversation, when the stream had started before it failed. */
  conversationId: string | null
  /** What arrived of the answer before it failed. */
  partial: string
}

export type ChatDone = { ok: true; conversationId: string; text: string; usage: Usage }

export type ChatResult = ChatDone | ChatFailure

export type ChatOptions = {
  baseUrl?: string
  /** Abort to stop the answer: the service stops the model at once. */
  signal?: AbortSignal
  /** Called once with the conversation's id, before any text. */
  onMeta?: (conversationId: string) => void
  /** Called with each piece of the answer as it arrives. */
  onDelta?: (text: string) => void
  fetch?: typeof fetch
}

/** POST /chat: sends `message` (into `conversationId`, or a new conversation) and streams the answer. */
export async function streamChat(
  accessToken: string,
  conversationId: string | null,
  message: string,
  options: ChatOptions = {},
): Promise<ChatResult> {
  const base = (options.baseUrl ?? chatUrl()).replace(/\/+$/, '')
  const doFetch = options.fetch ?? fetch
  let conversation: string | null = null
  let partial = ''
  const fail = (status: number | null, error: string, text: string, retryAfter: number | null = null): ChatFailure => ({
    ok: false,
    status,
    error,
    message: text,
    retryAfter,
    conversationId: conversation,
    partial,
  })

  let response: Response
  try {
    response = await doFetch(`${base}/chat`, {
      method: 'POST',
      headers: {
        Accept: 'text/event-stream',
        Authorization: `Bearer ${accessToken}`,
        'Content-Type': 'application/json',
      },
      body: JSON.stringify({ conversation_id: conversationId, message }),
      signal: options.signal,
      credentials: 'omit',
      cache: 'no-store',
    })
  } catch (err) {
    if (options.signal?.aborted) return fail(null, 'aborted', 'cancelled')
    return fail(null, 'network_error', err instanceof Error ? err.message : String(err))
  }

  if (!response.ok || !response.body) {
    const retryAfter = Number.parseInt(response.headers.get('Retry-After') ?? '', 10)
    let body: unknown = null
    try {
      body = await response.json()
    } catch {
      body = null
    }
    const code =
      typeof body === 'object' && body !== null && 'error' in body && typeof body.error === 'string'
        ? body.error
        : 'unexpected_response'
    const text =
      typeof body === 'object' && body !== null && 'message' in body && typeof body.message === 'string'
        ? body.message
        : `HTTP ${response.status}`
    const known = isServiceErrorCode(code) || ['rate_limited', 'upstream_error', 'anonymous_not_allowed'].includes(code)
    return fail(response.status, known ? code : 'unexpected_response', text, Number.isFinite(retryAfter) ? retryAfter : null)
  }

  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  try {
    for (;;) {
      const { value, done } = await reader.read()
      if (done) return fail(response.status, 'unexpected_response', 'the stream ended without its last event')
      buffer += value.replace(/\r\n?/g, '\n')
      let end: number
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end)
        buffer = buffer.slice(end + 2)
        const event = parseEvent(block)
        if (!event) continue
        if (event.name === 'meta') {
          conversation = String(event.data.conversation_id)
          options.onMeta?.(conversation)
        } else if (event.name === 'delta') {
          const text = String(event.data.text ?? '')
          partial += text
          options.onDelta?.(text)
        } else if (event.name === 'done') {
          await reader.cancel()
          return { ok: true, conversationId: conversation ?? '', text: partial, usage: event.data.usage as Usage }
        } else if (event.name === 'error') {
          await reader.cancel()
          return fail(response.status, String(event.data.error), String(event.data.message))
        }
      }
    }
  } catch (err) {
    if (options.signal?.aborted) return fail(null, 'aborted', 'cancelled')
    return fail(null, 'network_error', err instanceof Error ? err.message : String(err))
  }
}

function parseEvent(block: string): { name: string; data: Record<string, unknown> } | null {
  let name = 'message'
  const data: string[] = []
  for (const line of block.split('\n')) {
    if (line.startsWith('event:')) name = line.slice(6).trim()
    else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
  }
  if (data.length === 0) return null
  try {
    return { name, data: JSON.parse(data.join('\n')) }
  } catch {
    return null
  }
}

export type ConversationSummary = { id: string; title: string; updated_at: string }
export type StoredMessage = { role: 'user' | 'assistant'; content: string; created_at: string; incomplete: boolean }

/** A failed read: the HTTP status (null when no answer came) and the service's error code, or a client-side one. */
export type ChatReadFailure = { ok: false; status: number | null; error: string; message: string }

/** What a read of the history resolves to; it never throws. */
export type ChatRead<T> = { ok: true; data: T } | ChatReadFailure

type ReadOptions = { baseUrl?: string; signal?: AbortSignal }

/** GET /conversations: the caller's own, newest first, or why they could not be read. */
export async function fetchConversations(
  accessToken: string,
  options: ReadOptions = {},
): Promise<ChatRead<ConversationSummary[]>> {
  const read = await getJson(accessToken, '/conversations', options)
  if (!read.ok) return read
  const list = (read.data as { conversations?: unknown } | null)?.conversations
  return Array.isArray(list)
    ? { ok: true, data: list as ConversationSummary[] }
    : { ok: false, status: 200, error: 'unexpected_response', message: 'no "conversations" array in the answer' }
}

/**
 * GET /conversations/{id}: its messages, oldest first, or why they could not be read
 * (`not_found` for someone else's or an unknown conversation).
 */
export async function fetchConversation(
  accessToken: string,
  id: string,
  options: ReadOptions = {},
): Promise<ChatRead<StoredMessage[]>> {
  const read = await getJson(accessToken, `/conversations/${encodeURIComponent(id)}`, options)
  if (!read.ok) return read
  const messages = (read.data as { messages?: unknown } | null)?.messages
  return Array.isArray(messages)
    ? { ok: true, data: messages as StoredMessage[] }
    : { ok: false, status: 200, error: 'unexpected_response', message: 'no "messages" array in the answer' }
}

/** GET /conversations: the caller's own, newest first; null on any failure (fetchConversations says which). */
export async function listConversations(
  accessToken: string,
  options: ReadOptions = {},
): Promise<ConversationSummary[] | null> {
  const read = await fetchConversations(accessToken, options)
  return read.ok ? read.data : null
}

/**
 * GET /conversations until it lists `id`, at most `attempts` times (default 10) `delayMs` apart
 * (default 200): the service stores a stopped answer once it notices the browser went away, a
 * moment after the abort, so the first listing may not have it yet. The last listing; null on
 * a failure.
 */
export async function listConversationsWith(
  accessToken: string,
  id: string,
  options: ReadOptions & { attempts?: number; delayMs?: number } = {},
): Promise<ConversationSummary[] | null> {
  const attempts = options.attempts ?? 10
  let list: ConversationSummary[] | null = null
  for (let i = 0; i < attempts; i++) {
    if (i > 0) await new Promise((resolve) => setTimeout(resolve, options.delayMs ?? 200))
    list = await listConversations(accessToken, options)
    if (list === null || list.some((c) => c.id === id)) return list
  }
  return list
}

/** GET /conversations/{id}: its messages, oldest first; null when not found (or on failure). */
export async function getConversation(
  accessToken: string,
  id: string,
  options: ReadOptions = {},
): Promise<StoredMessage[] | null> {
  const read = await fetchConversation(accessToken, id, options)
  return read.ok ? read.data : null
}

/** What a person should read about a failed chat call, and what they can do next. */
export type ChatAdvice = {
  /** In the person's words, no codes. */
  message: string
  /** The technical cause, for small print; null when there is nothing to add. */
  detail: string | null
  /**
   * 'retry': offer to try again now. 'wait': the quota is used up; sending is possible again
   * after `retryAfter` seconds. 'sign_in': the session is over. 'none': nothing to do here.
   */
  action: 'retry' | 'wait' | 'sign_in' | 'none'
  /** Seconds to wait (Retry-After), when the service said. */
  retryAfter: number | null
}

/** Turns a failed POST /chat or history read into words for people (docs/chat.md lists the codes). */
export function describeChatFailure(
  failure: { status: number | null; error: string; message: string; retryAfter?: number | null },
  baseUrl: string = chatUrl(),
): ChatAdvice {
  const retryAfter = failure.retryAfter ?? null
  const detail = `${failure.status ?? 'no answer'} ${failure.error}: ${failure.message}`
  switch (failure.error) {
    case 'network_error':
      return {
        message: "Couldn't reach the chat service. Check your connection, then try again.",
        // A browser reports a refused origin exactly like a service that is down.
        detail: `No answer from ${baseUrl} (${failure.message}): it may be down, or it does not allow this site's origin.`,
        action: 'retry',
        retryAfter: null,
      }
    case 'rate_limited':
      return { message: "You've reached the message limit for now.", detail: null, action: 'wait', retryAfter }
    case 'missing_token':
    case 'invalid_token':
    case 'insufficient_scope':
      return { message: 'Your session expired. Sign in again to keep chatting.', detail, action: 'sign_in', retryAfter: null }
    case 'anonymous_not_allowed':
      return { message: 'Guests cannot chat here. Create an account or sign in.', detail, action: 'sign_in', retryAfter: null }
    case 'unavailable':
      return {
        message: "The assistant isn't available right now. Try again in a moment.",
        detail,
        action: 'retry',
        retryAfter,
      }
    case 'upstream_error':
      return { message: "The assistant couldn't answer this time.", detail, action: 'retry', retryAfter: null }
    case 'invalid_body':
    case 'payload_too_large':
      return {
        message: 'That message cannot be sent: it is empty or longer than 4,000 characters.',
        detail,
        action: 'none',
        retryAfter: null,
      }
    case 'not_found':
      return { message: 'That conversation no longer exists.', detail, action: 'none', retryAfter: null }
    case 'aborted':
      return { message: 'Cancelled.', detail: null, action: 'none', retryAfter: null }
    default:
      return { message: 'Something went wrong on our side. Try again in a moment.', detail, action: 'retry', retryAfter: null }
  }
}

async function getJson(accessToken: string, path: string, options: ReadOptions): Promise<ChatRead<unknown>> {
  const base = (options.baseUrl ?? chatUrl()).replace(/\/+$/, '')
  let response: Response
  try {
    response = await fetch(`${base}${path}`, {
      headers: { Accept: 'application/json', Authorization: `Bearer ${accessToken}` },
      signal: options.signal,
      credentials: 'omit',
      cache: 'no-store',
    })
  } catch (err) {
    if (options.signal?.aborted) return { ok: false, status: null, error: 'aborted', message: 'cancelled' }
    return { ok: false, status: null, error: 'network_error', message: err instanceof Error ? err.message : String(err) }
  }
  let body: unknown = null
  try {
    body = await response.json()
  } catch {
    body = null
  }
  if (response.ok) return { ok: true, data: body }
  const error =
    typeof body === 'object' && body !== null && 'error' in body && typeof body.error === 'string'
      ? body.error
      : 'unexpected_response'
  const message =
    typeof body === 'object' && body !== null && 'message' in body && typeof body.message === 'string'
      ? body.message
      : `HTTP ${response.status}`
  return { ok: false, status: response.status, error, message }
}
