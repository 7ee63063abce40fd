'use client'

import { useActionState } from 'react'
import { useFormStatus } from 'react-dom'
import Notice from '@/components/notice'
import { authenticate, type SignInState } from './actions'

const initial: SignInState = { error: null, notice: null, email: '' }

export default function SignInForm() {
  const [state, action] = useActionState(authenticate, initial)

  return (
    <form className="stack" action={action}>
      <div className="field">
        <label htmlFor="email">Email</label>
        {/* defaultValue, not value: after a failed attempt React resets the form to it. */}
        <input id="email" name="email" type="email" autoComplete="email" required defaultValue={state.email} />
      </div>
      <div className="field">
        <label htmlFor="password">Password</label>
        <input id="password" name="password" type="password" autoComplete="current-password" required />
      </div>
      <Buttons />
      {state.error && <Notice title={state.error.message} detail={state.error.detail} />}
      {state.notice && <Notice tone="info" title={state.notice} />}
    </form>
  )
}

/** Both submit buttons; the one pressed says what is happening while the form is sent. */
function Buttons() {
  const { pending, data } = useFormStatus()
  const intent = pending ? data?.get('intent') : null
  return (
    <div className="actions">
      <button type="submit" name="intent" value="sign-in" className="primary" disabled={pending}>
        {intent === 'sign-in' ? 'Signing in…' : 'Sign in'}
      </button>
      <button type="submit" name="intent" value="sign-up" disabled={pending}>
        {intent === 'sign-up' ? 'Creating account…' : 'Create account'}
      </button>
    </div>
  )
}
