'use client'

import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react'
import {
  getConversation,
  listConversations,
  listConversationsWith,
  streamChat,
  type ConversationSummary,
  type StoredMessage,
} from '@/lib/chat'
import { createClient } from '@/utils/supabase/client'

type Turn = { role: 'user' | 'assistant'; content: string; incomplete?: boolean }

type Status =
  | { kind: 'idle' }
  | { kind: 'streaming' }
  | { kind: 'error'; message: string }
  | { kind: 'rate_limited'; retryAfter: number | null }

/** The browser session's access token (refreshed by supabase-js when needed). */
async function accessToken(): Promise<string | null> {
  const { data, error } = await createClient().auth.getSession()
  if (error || !data.session) return null
  return data.session.access_token
}

export default function ChatPanel() {
  const [conversations, setConversations] = useState<ConversationSummary[]>([])
  const [conversationId, setConversationId] = useState<string | null>(null)
  const [turns, setTurns] = useState<Turn[]>([])
  const [draft, setDraft] = useState('')
  const [status, setStatus] = useState<Status>({ kind: 'idle' })
  const abort = useRef<AbortController | null>(null)

  // `stopped`: the conversation of an answer the user stopped, which the service stores a
  // moment after the abort; the list is read again until it shows it.
  const refreshList = useCallback(async (stopped: string | null = null) => {
    const token = await accessToken()
    if (!token) return
    const list = stopped ? await listConversationsWith(token, stopped) : await listConversations(token)
    if (list) setConversations(list)
  }, [])

  useEffect(() => {
    void refreshList()
    return () => abort.current?.abort()
  }, [refreshList])

  async function open(id: string) {
    const token = await accessToken()
    if (!token) return
    const messages: StoredMessage[] | null = await getConversation(token, id)
    if (!messages) return
    setConversationId(id)
    setTurns(messages.map((m) => ({ role: m.role, content: m.content, incomplete: m.incomplete })))
  }

  async function send(event: FormEvent) {
    event.preventDefault()
    const message = draft.trim()
    if (!message || status.kind === 'streaming') return
    const token = await accessToken()
    if (!token) {
      setStatus({ kind: 'error', message: 'Your session expired, sign in again.' })
      return
    }
    setDraft('')
    setTurns((t) => [...t, { role: 'user', content: message }, { role: 'assistant', content: '' }])
    setStatus({ kind: 'streaming' })
    const controller = new AbortController()
    abort.current = controller
    const result = await streamChat(token, conversationId, message, {
      signal: controller.signal,
      onMeta: (id) => setConversationId(id),
      // Each piece is appended as it arrives: the answer renders while it streams.
      onDelta: (text) =>
        setTurns((t) => {
          const last = t[t.length - 1]
          return [...t.slice(0, -1), { ...last, content: last.content + text }]
        }),
    })
    abort.current = null
    if (result.ok) {
      setStatus({ kind: 'idle' })
    } else if (result.error === 'rate_limited') {
      setTurns((t) => t.slice(0, -2))
      setStatus({ kind: 'rate_limited', retryAfter: result.retryAfter })
    } else if (result.error === 'aborted') {
      setTurns((t) => [...t.slice(0, -1), { ...t[t.length - 1], incomplete: true }])
      setStatus({ kind: 'idle' })
    } else {
      setStatus({ kind: 'error', message: result.message })
    }
    void refreshList(!result.ok && result.error === 'aborted' ? result.conversationId : null)
  }

  return (
    <section className="chat">
      <aside>
        <h2>Conversations</h2>
        <button type="button" onClick={() => { setConversationId(null); setTurns([]) }}>
          New conversation
        </button>
        <ul>
          {conversations.map((c) => (
            <li key={c.id}>
              <button type="button" onClick={() => void open(c.id)}>{c.title}</button>
            </li>
          ))}
        </ul>
      </aside>
      <div>
        <ol className="turns">
          {turns.map((turn, i) => (
            <li key={i} className={turn.role}>
              {turn.content}
              {turn.incomplete ? <em> (stopped)</em> : null}
            </li>
          ))}
        </ol>
        {status.kind === 'rate_limited' ? (
          <p role="alert">
            Too many messages: try again in {status.retryAfter ?? 'a few'} seconds.
          </p>
        ) : null}
        {status.kind === 'error' ? <p role="alert">{status.message}</p> : null}
        <form onSubmit={send}>
          <textarea value={draft} onChange={(e) => setDraft(e.target.value)} maxLength={4000} rows={3} />
          <button type="submit" disabled={status.kind === 'streaming'}>Send</button>
          {status.kind === 'streaming' ? (
            <button type="button" onClick={() => abort.current?.abort()}>Stop</button>
          ) : null}
        </form>
      </div>
    </section>
  )
}
