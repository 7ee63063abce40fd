'use client'

import { useActionState } from 'react'
import { signIn, signUp, type SignInState } from './actions'

const initial: SignInState = { error: null, notice: null }

export default function SignInForm() {
  const [signInState, signInAction, signingIn] = useActionState(signIn, initial)
  const [signUpState, signUpAction, signingUp] = useActionState(signUp, initial)
  const pending = signingIn || signingUp
  const error = signInState.error ?? signUpState.error
  const notice = signUpState.notice

  return (
    <form action={signInAction}>
      <label>
        Email
        <input name="email" type="email" autoComplete="email" required />
      </label>
      <label>
        Password
        <input name="password" type="password" autoComplete="current-password" required />
      </label>
      <div className="row">
        <button type="submit" disabled={pending}>
          {signingIn ? 'Signing in…' : 'Sign in'}
        </button>
        <button type="submit" formAction={signUpAction} disabled={pending}>
          {signingUp ? 'Creating account…' : 'Create account'}
        </button>
      </div>
      {error && (
        <p role="alert" className="error">
          {error}
        </p>
      )}
      {notice && <p role="status">{notice}</p>}
    </form>
  )
}
