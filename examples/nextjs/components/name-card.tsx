'use client'

import Link from 'next/link'
import { useCallback, useEffect, useState, type FormEvent } from 'react'
import Notice from '@/components/notice'
import { describeFailure, getName, putName, type ErrorAdvice, type ServiceFailure } from '@/lib/service'
import { createClient } from '@/utils/supabase/client'

type LoadState =
  | { status: 'loading' }
  | { status: 'loaded' }
  | { status: 'failed'; advice: ErrorAdvice; failure: ServiceFailure | null }

type SaveState =
  | { status: 'idle' }
  | { status: 'saving' }
  | { status: 'saved' }
  | { status: 'failed'; advice: ErrorAdvice; failure: ServiceFailure | null }

const SIGNED_OUT: ErrorAdvice = { message: 'Your session expired, sign in again.', detail: null, action: 'sign_in' }

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

/**
 * The person's name, read from the service (`GET /name`) and changed in place (`PUT /name`).
 * It is shown once, in the field that edits it; what is typed stays there when saving fails.
 */
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
      setLoad({ status: 'loaded' })
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
      setSave({ status: 'failed', advice: SIGNED_OUT, failure: null })
      return
    }
    const trimmed = draft.trim()
    // An empty field clears the name (the service stores null).
    const result = await putName(token, trimmed === '' ? null : trimmed)
    if (result.ok) {
      setSave({ status: 'saved' })
      setDraft(result.data.full_name ?? '')
    } else {
      setSave({ status: 'failed', advice: describeFailure(result), failure: result })
    }
  }

  return (
    <section className="card" aria-busy={load.status === 'loading'}>

      {load.status === 'loading' && (
        <p role="status" className="muted">
          Loading your profile…
        </p>
      )}

      {load.status === 'failed' && (
        <Problem advice={load.advice} failure={load.failure} onRetry={() => void fetchName()} />
      )}

      {load.status === 'loaded' && (
        <form className="stack" onSubmit={onSave} data-state="loaded">
          <div className="field">
            <label htmlFor="full-name">Your name</label>
            <input
              id="full-name"
              name="full_name"
              value={draft}
              maxLength={200}
              autoComplete="name"
              placeholder="Add your name"
              aria-describedby="full-name-hint"
              onChange={(e) => {
                setDraft(e.target.value)
                if (save.status !== 'saving') setSave({ status: 'idle' })
              }}
            />
            <p id="full-name-hint" className="hint">
              How the app addresses you. Leave it empty to remove it.
            </p>
          </div>
          <div className="actions">
            <button type="submit" className="primary" disabled={save.status === 'saving'}>
              {save.status === 'saving' ? 'Saving…' : 'Save'}
            </button>
            <span role="status" className="saved">
              {save.status === 'saved' ? '✓ Saved' : ''}
            </span>
          </div>
          {save.status === 'failed' && <Problem advice={save.advice} failure={save.failure} />}
        </form>
      )}
    </section>
  )
}

function Problem({
  advice,
  failure,
  onRetry,
}: {
  advice: ErrorAdvice
  failure: ServiceFailure | null
  onRetry?: () => void
}) {
  return (
    <Notice
      title={advice.message}
      detail={advice.detail}
      code={failure?.error}
      actions={
        advice.action === 'sign_in' ? (
          <Link href="/login">Sign in again</Link>
        ) : advice.action === 'retry' && onRetry ? (
          <button type="button" onClick={onRetry}>
            Try again
          </button>
        ) : null
      }
    />
  )
}
