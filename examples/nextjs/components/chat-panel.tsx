'use client'

import Link from 'next/link'
import { useCallback, useEffect, useRef, useState, type FormEvent, type KeyboardEvent } from 'react'
import Notice from '@/components/notice'
import {
  describeChatFailure,
  fetchConversation,
  fetchConversations,
  listConversationsWith,
  streamChat,
  type ChatAdvice,
  type ConversationSummary,
} from '@/lib/chat'
import { createClient } from '@/utils/supabase/client'

/**
 * An assistant turn is `waiting` for its first words, then `streaming`, then `done`; or
 * `stopped` (the person pressed Stop), `cut` (it failed partway) or `incomplete` (stored
 * unfinished, seen again from the history).
 */
type TurnState = 'done' | 'waiting' | 'streaming' | 'stopped' | 'cut' | 'incomplete'

type Turn = { key: number; role: 'user' | 'assistant'; content: string; state: TurnState }

type ListState =
  | { status: 'loading' }
  | { status: 'loaded'; items: ConversationSummary[] }
  | { status: 'failed'; advice: ChatAdvice; code: string }

/** Something that went wrong, shown above the message box until it is dealt with. */
type Problem = {
  title: string
  advice: ChatAdvice
  code: string
  retry: (() => void) | null
  /** For the quota: when sending is possible again (ms since the epoch). */
  until: number | null
}

/** `sending`: the request is out but the service has not taken it yet; `streaming`: it has. */
type Phase = 'idle' | 'sending' | 'streaming'

const SIGNED_OUT: ChatAdvice = {
  message: 'Your session expired. Sign in again to keep chatting.',
  detail: null,
  action: 'sign_in',
  retryAfter: null,
}

/** When the service sends no Retry-After with its 429, the quota's window is a minute. */
const DEFAULT_WAIT_SECONDS = 60

/** The browser session's access token (refreshed by supabase-js when needed). */
async function accessToken(): Promise<string | null> {
  const { data, error } = await createClient().auth.getSession()
  if (error || !data.session) return null
  return data.session.access_token
}

function problemFor(title: string, advice: ChatAdvice, code: string, retry: (() => void) | null): Problem {
  const until =
    advice.action === 'wait' ? Date.now() + (advice.retryAfter ?? DEFAULT_WAIT_SECONDS) * 1000 : null
  return { title, advice, code, retry, until }
}

/**
 * The chat: the person's conversations beside the open one, whose answer streams in as it
 * is written. Nothing typed is lost: the message leaves the box only once the service has
 * taken it, so a refusal (the quota, a network failure, an expired session) leaves it there
 * to send again, and a failed answer leaves no empty turn behind.
 */
export default function ChatPanel() {
  const [list, setList] = useState<ListState>({ status: 'loading' })
  const [conversationId, setConversationId] = useState<string | null>(null)
  const [turns, setTurns] = useState<Turn[]>([])
  const [draft, setDraft] = useState('')
  const [phase, setPhase] = useState<Phase>('idle')
  const [problem, setProblem] = useState<Problem | null>(null)
  const [now, setNow] = useState(() => Date.now())

  const abort = useRef<AbortController | null>(null)
  // Read by async callbacks, which would otherwise see the values of the render they began in.
  const busy = useRef(false)
  const draftRef = useRef(draft)
  useEffect(() => {
    draftRef.current = draft
  }, [draft])
  const keys = useRef(0)
  const nextKey = () => ++keys.current

  const textarea = useRef<HTMLTextAreaElement>(null)
  const threadEnd = useRef<HTMLDivElement>(null)
  const composer = useRef<HTMLFormElement>(null)
  const atEnd = useRef(true)

  // `stopped`: the conversation of an answer the person stopped, which the service stores a
  // moment after the abort; the list is read again until it shows it.
  const refreshList = useCallback(async (stopped: string | null = null) => {
    const token = await accessToken()
    if (!token) {
      setList({ status: 'failed', advice: SIGNED_OUT, code: 'missing_token' })
      return
    }
    if (stopped) {
      const items = await listConversationsWith(token, stopped)
      if (items) {
        setList({ status: 'loaded', items })
        return
      }
    }
    const read = await fetchConversations(token)
    // A list already on screen stays when a later refresh fails: the failure that prompted
    // the refresh is already being shown above the message box.
    setList((shown) =>
      read.ok
        ? { status: 'loaded', items: read.data }
        : shown.status === 'loaded'
          ? shown
          : { status: 'failed', advice: describeChatFailure(read), code: read.error },
    )
  }, [])

  useEffect(() => {
    void refreshList()
    return () => abort.current?.abort()
  }, [refreshList])

  // The quota's countdown: ticks while there is a wait, and ends it.
  const until = problem?.until ?? null
  useEffect(() => {
    if (until === null) return
    const tick = () => {
      const t = Date.now()
      setNow(t)
      if (t >= until) setProblem((p) => (p?.until === until ? null : p))
    }
    tick()
    const timer = setInterval(tick, 1000)
    return () => clearInterval(timer)
  }, [until])
  const waitSeconds = until === null ? 0 : Math.max(0, Math.ceil((until - now) / 1000))
  const waiting = waitSeconds > 0

  // Follow the answer as it grows, unless the person has scrolled up to read.
  useEffect(() => {
    const end = threadEnd.current
    if (!end) return
    const observer = new IntersectionObserver(([entry]) => {
      atEnd.current = entry.isIntersecting
    })
    observer.observe(end)
    return () => observer.disconnect()
  }, [])
  const turnCount = turns.length
  const lastTurnLength = turns[turns.length - 1]?.content.length ?? 0
  // A note under the last answer ("Stopped", "cut off") makes it taller too.
  const lastTurnState = turns[turns.length - 1]?.state
  const lastCount = useRef(0)
  useEffect(() => {
    const added = turnCount > lastCount.current
    lastCount.current = turnCount
    if (!added && !atEnd.current) return
    // Wide screens: scrolls the messages' own pane. Phones, where the page scrolls as a
    // whole: brings the last words, then the message box below them, into view.
    threadEnd.current?.scrollIntoView({ block: 'nearest' })
    composer.current?.scrollIntoView({ block: 'nearest' })
  }, [turnCount, lastTurnLength, lastTurnState])

  const updateTurn = (key: number, change: (turn: Turn) => Turn) =>
    setTurns((all) => all.map((t) => (t.key === key ? change(t) : t)))

  // A wait for the quota outlives anything else that clears the problem.
  const clearProblem = () => setProblem((p) => (p?.until ? p : null))

  async function sendMessage(text: string) {
    const message = text.trim()
    if (!message || busy.current || waiting) return
    busy.current = true
    setProblem(null)
    setPhase('sending')
    const token = await accessToken()
    if (!token) {
      busy.current = false
      setPhase('idle')
      setProblem(problemFor("Your message wasn't sent.", SIGNED_OUT, 'missing_token', null))
      return
    }
    const userKey = nextKey()
    const answerKey = nextKey()
    setTurns((all) => [
      ...all,
      { key: userKey, role: 'user', content: message, state: 'done' },
      { key: answerKey, role: 'assistant', content: '', state: 'waiting' },
    ])
    const controller = new AbortController()
    abort.current = controller
    let accepted = false
    const result = await streamChat(token, conversationId, message, {
      signal: controller.signal,
      onMeta: (id) => {
        // The service has the message now: only here does it leave the box.
        accepted = true
        setConversationId(id)
        setDraft((d) => (d === text ? '' : d))
        setPhase('streaming')
      },
      // Each piece is appended as it arrives: the answer renders while it streams.
      onDelta: (piece) => updateTurn(answerKey, (t) => ({ ...t, content: t.content + piece, state: 'streaming' })),
    })
    abort.current = null
    busy.current = false
    setPhase('idle')

    if (result.ok) {
      updateTurn(answerKey, (t) => ({ ...t, state: 'done' }))
      void refreshList()
      return
    }
    if (!accepted) {
      // Nothing reached the conversation: take both turns back; the message is still in the box.
      setTurns((all) => all.filter((t) => t.key !== userKey && t.key !== answerKey))
      if (result.error === 'aborted') return
      setProblem(
        problemFor("Your message wasn't sent.", describeChatFailure(result), result.error, () =>
          void sendMessage(draftRef.current),
        ),
      )
      return
    }
    if (result.error === 'aborted') {
      updateTurn(answerKey, (t) => ({ ...t, state: 'stopped' }))
      void refreshList(result.conversationId)
      return
    }
    // Taken, then failed partway: keep what arrived, marked as cut; no empty answer stays.
    setTurns((all) =>
      all.flatMap((t) => (t.key !== answerKey ? [t] : t.content ? [{ ...t, state: 'cut' as const }] : [])),
    )
    setProblem(
      problemFor("The answer didn't finish.", describeChatFailure(result), result.error, () => void sendMessage(message)),
    )
    void refreshList()
  }

  async function open(id: string) {
    // Another conversation while an answer comes: stop it (what arrived is kept and stored).
    abort.current?.abort()
    clearProblem()
    const token = await accessToken()
    if (!token) {
      setProblem(problemFor("Couldn't open this conversation.", SIGNED_OUT, 'missing_token', null))
      return
    }
    const read = await fetchConversation(token, id)
    if (!read.ok) {
      setProblem(
        problemFor("Couldn't open this conversation.", describeChatFailure(read), read.error, () => void open(id)),
      )
      return
    }
    setConversationId(id)
    setTurns(
      read.data.map((m) => ({
        key: nextKey(),
        role: m.role,
        content: m.content,
        state: m.incomplete ? ('incomplete' as const) : ('done' as const),
      })),
    )
  }

  function startNew() {
    abort.current?.abort()
    clearProblem()
    setConversationId(null)
    setTurns([])
    textarea.current?.focus()
  }

  function onSubmit(event: FormEvent) {
    event.preventDefault()
    void sendMessage(draft)
    textarea.current?.focus()
  }

  function onKeyDown(event: KeyboardEvent<HTMLTextAreaElement>) {
    // Enter sends, Shift+Enter breaks the line; not while an input method is composing a word.
    if (event.key === 'Enter' && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault()
      event.currentTarget.form?.requestSubmit()
    }
  }

  const working = phase !== 'idle'
  const rows = Math.min(8, Math.max(2, draft.split('\n').length))

  return (
    <div className="chat-layout">
      <aside className="conversations" aria-labelledby="conversations-heading">
        <div className="conversations-head">
          <h2 id="conversations-heading">Conversations</h2>
          <button type="button" onClick={startNew}>
            New conversation
          </button>
        </div>
        {list.status === 'loading' && (
          <p className="empty muted" role="status">
            Loading…
          </p>
        )}
        {list.status === 'failed' && (
          <Notice
            title="Couldn't load your conversations."
            detail={list.advice.detail}
            code={list.code}
            actions={
              list.advice.action === 'sign_in' ? (
                <Link href="/login">Sign in again</Link>
              ) : (
                <button
                  type="button"
                  onClick={() => {
                    setList({ status: 'loading' })
                    void refreshList()
                  }}
                >
                  Try again
                </button>
              )
            }
          >
            <p className="body">{list.advice.message}</p>
          </Notice>
        )}
        {list.status === 'loaded' && list.items.length === 0 && (
          <p className="empty muted">No conversations yet. Your first message starts one.</p>
        )}
        {list.status === 'loaded' && list.items.length > 0 && (
          <ul className="conversation-list">
            {list.items.map((c) => (
              <li key={c.id}>
                <button
                  type="button"
                  title={c.title}
                  aria-current={c.id === conversationId ? 'true' : undefined}
                  onClick={() => void open(c.id)}
                >
                  <span className="title">{c.title}</span>
                </button>
              </li>
            ))}
          </ul>
        )}
      </aside>

      <section className="thread" aria-label="Conversation">
        {/* Scrolls on its own on wide screens: focusable, so it scrolls from the keyboard too. */}
        <section className="turns-scroller" tabIndex={0} aria-label="Messages">
          {turns.length === 0 && (
            <p className="intro muted">Ask anything. Your conversations are kept in your account.</p>
          )}
          <ol className="turns">
            {turns.map((turn) => (
              <li key={turn.key} className={`turn ${turn.role}`} data-state={turn.state}>
                <div className="bubble">
                  <span className="author">{turn.role === 'user' ? 'You' : 'Assistant'}</span>
                  {turn.content ? <div className="content">{turn.content}</div> : null}
                  {turn.state === 'waiting' ? <span className="writing">Writing…</span> : null}
                  {turn.state === 'stopped' ? (
                    <span className="note">{turn.content ? 'Stopped' : 'Stopped before it answered'}</span>
                  ) : null}
                  {turn.state === 'cut' ? <span className="note">The answer was cut off</span> : null}
                  {turn.state === 'incomplete' ? (
                    <span className="note">{turn.content ? 'Incomplete answer' : 'No answer'}</span>
                  ) : null}
                </div>
              </li>
            ))}
          </ol>
          <div ref={threadEnd} className="thread-end" />
        </section>

        <p className="visually-hidden" role="status">
          {phase === 'streaming' ? 'The assistant is answering.' : ''}
        </p>

        {problem && (
          <Notice
            title={problem.title}
            detail={problem.advice.detail}
            code={problem.code}
            actions={
              problem.advice.action === 'sign_in' ? (
                <Link href="/login">Sign in again</Link>
              ) : problem.retry && problem.advice.action === 'retry' ? (
                <button type="button" onClick={problem.retry}>
                  Try again
                </button>
              ) : null
            }
          >
            <p className="body">
              {problem.advice.message}
              {problem.until !== null && (
                <>
                  {' '}
                  You can send again in <span role="timer">{waitSeconds}</span> s.
                </>
              )}
            </p>
          </Notice>
        )}

        <form className="composer" ref={composer} onSubmit={onSubmit}>
          <label htmlFor="message" className="visually-hidden">
            Message
          </label>
          <textarea
            id="message"
            ref={textarea}
            value={draft}
            onChange={(e) => setDraft(e.target.value)}
            onKeyDown={onKeyDown}
            maxLength={4000}
            rows={rows}
            placeholder="Write a message…"
            aria-describedby="message-hint"
            // Until the service has taken a message, the box holds it and stays as it is.
            readOnly={phase === 'sending'}
          />
          {/* Send and Stop share one place: Stop while an answer is coming, Send otherwise. */}
          <div className="send-slot">
            {working ? (
              <button key="stop" type="button" onClick={() => abort.current?.abort()}>
                Stop
              </button>
            ) : (
              <button key="send" type="submit" className="primary" disabled={waiting || draft.trim() === ''}>
                Send
              </button>
            )}
          </div>
          <p id="message-hint" className="hint">
            Enter sends, Shift+Enter starts a new line.
          </p>
        </form>
      </section>
    </div>
  )
}
