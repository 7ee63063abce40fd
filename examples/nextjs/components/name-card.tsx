'use client'

import Link from 'next/link'
import { useCallback, useEffect, useState, type FormEvent } from 'react'
import {
  describeFailure,
  getName,
  putName,
  type ErrorAdvice,
  type ServiceFailure,
} from '@/lib/service'
import { createClient } from '@/utils/supabase/client'

type LoadState =
  | { status: 'loading' }
  | { status: 'loaded'; fullName: string | null }
  | { status: 'failed'; advice: ErrorAdvice; failure: ServiceFailure | null }

type SaveState =
  | { status: 'idle' }
  | { status: 'saving' }
  | { status: 'saved' }
  | { status: 'failed'; advice: ErrorAdvice }

const SIGNED_OUT: ErrorAdvice = { message: 'Your session expired, sign in again.', action: 'sign_in' }

/**
 * The access token of the browser's Supabase session. getSession() refreshes
 * it first when it is about to expire, so each call gets a usable token.
 * (Reading the session in the browser is fine: the service verifies the token.)
 */
async function accessToken(): Promise<string | null> {
  const supabase = createClient()
  const { data, error } = await supabase.auth.getSession()
  if (error || !data.session) return null
  return data.session.access_token
}

export default function NameCard() {
  const [load, setLoad] = useState<LoadState>({ status: 'loading' })
  const [save, setSave] = useState<SaveState>({ status: 'idle' })
  const [draft, setDraft] = useState('')

  const fetchName = useCallback(async (signal?: AbortSignal) => {
    setLoad({ status: 'loading' })
    const token = await accessToken()
    if (signal?.aborted) return
    if (!token) {
      setLoad({ status: 'failed', advice: SIGNED_OUT, failure: null })
      return
    }
    const result = await getName(token, { signal })
    if (result.ok) {
      setLoad({ status: 'loaded', fullName: result.data.full_name })
      setDraft(result.data.full_name ?? '')
    } else if (result.error !== 'aborted') {
      setLoad({ status: 'failed', advice: describeFailure(result), failure: result })
    }
  }, [])

  useEffect(() => {
    const controller = new AbortController()
    void fetchName(controller.signal)
    // React runs effects twice in development (Strict Mode); the abort makes
    // the first, discarded run harmless.
    return () => controller.abort()
  }, [fetchName])

  // Signing out in another tab clears the cookies: show that here too.
  useEffect(() => {
    const supabase = createClient()
    const { data } = supabase.auth.onAuthStateChange((event) => {
      if (event === 'SIGNED_OUT') setLoad({ status: 'failed', advice: SIGNED_OUT, failure: null })
    })
    return () => data.subscription.unsubscribe()
  }, [])

  async function onSave(event: FormEvent<HTMLFormElement>) {
    event.preventDefault()
    setSave({ status: 'saving' })
    const token = await accessToken()
    if (!token) {
      setSave({ status: 'failed', advice: SIGNED_OUT })
      return
    }
    const trimmed = draft.trim()
    // An empty field clears the name (the service stores null).
    const result = await putName(token, trimmed === '' ? null : trimmed)
    if (result.ok) {
      setSave({ status: 'saved' })
      setLoad({ status: 'loaded', fullName: result.data.full_name })
      setDraft(result.data.full_name ?? '')
    } else {
      setSave({ status: 'failed', advice: describeFailure(result) })
    }
  }

  return (
    <section className="card" aria-live="polite">
      <h2>Name from the service</h2>

      {load.status === 'loading' && <p className="muted">Loading your name…</p>}

      {load.status === 'loaded' && (
        <p data-testid="full-name">
          {load.fullName === null ? <em>(no name set)</em> : <strong>{load.fullName}</strong>}
        </p>
      )}

      {load.status === 'failed' && (
        <Problem advice={load.advice} onRetry={() => void fetchName()} code={load.failure?.error} />
      )}

      {load.status === 'loaded' && (
        <form onSubmit={onSave}>
          <label>
            Full name
            <input
              name="full_name"
              value={draft}
              maxLength={200}
              onChange={(e) => {
                setDraft(e.target.value)
                if (save.status !== 'saving') setSave({ status: 'idle' })
              }}
            />
          </label>
          <div className="row">
            <button type="submit" disabled={save.status === 'saving'}>
              {save.status === 'saving' ? 'Saving…' : 'Save'}
            </button>
            {save.status === 'saved' && <span role="status">Saved.</span>}
          </div>
          {save.status === 'failed' && <Problem advice={save.advice} />}
        </form>
      )}
    </section>
  )
}

function Problem({
  advice,
  onRetry,
  code,
}: {
  advice: ErrorAdvice
  onRetry?: () => void
  code?: string
}) {
  return (
    <div role="alert" className="error" data-error-code={code}>
      <p>{advice.message}</p>
      {advice.action === 'sign_in' && <Link href="/login">Sign in again</Link>}
      {advice.action === 'retry' && onRetry && (
        <button type="button" onClick={onRetry}>
          Try again
        </button>
      )}
    </div>
  )
}
