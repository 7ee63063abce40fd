'use server'

import { revalidatePath } from 'next/cache'
import { redirect } from 'next/navigation'
import { createClient } from '@/utils/supabase/server'

/** What went wrong, for the person (`message`) and for whoever debugs it (`detail`). */
export type AuthProblem = { message: string; detail: string | null }

/**
 * The form's state after an attempt. `email` is what was typed: React resets a form once its
 * action has run, and the field takes it back as its default value, so a failed attempt
 * does not make the person type it again. The password is never sent back.
 */
export type SignInState = { error: AuthProblem | null; notice: string | null; email: string }

function credentials(formData: FormData) {
  return {
    email: String(formData.get('email') ?? '').trim(),
    password: String(formData.get('password') ?? ''),
  }
}

/** Supabase Auth's error codes (https://supabase.com/docs/guides/auth/debugging/error-codes) in people's words. */
function describe(error: { code?: string; message: string; status?: number }): AuthProblem {
  const detail = `${error.code ?? 'error'}${error.status ? ` (${error.status})` : ''}: ${error.message}`
  switch (error.code) {
    case 'invalid_credentials':
      return { message: 'Wrong email or password. Check both, then try again.', detail: null }
    case 'email_not_confirmed':
      return { message: 'Confirm your email first: open the link we sent you, then sign in.', detail: null }
    case 'user_already_exists':
    case 'email_exists':
      return { message: 'There is already an account with this email. Sign in instead.', detail: null }
    case 'weak_password':
      return { message: 'Choose a stronger password.', detail: error.message }
    case 'over_request_rate_limit':
    case 'over_email_send_rate_limit':
      return { message: 'Too many attempts. Wait a minute, then try again.', detail }
    default:
      // No code: the Auth server could not be reached, or answered something unexpected.
      return { message: "We couldn't sign you in just now. Try again in a moment.", detail }
  }
}

/**
 * Email + password sign-in, or sign-up when the "Create account" button sent the form
 * (`intent=sign-up`). The server client writes the session cookies.
 */
export async function authenticate(_prev: SignInState, formData: FormData): Promise<SignInState> {
  const { email, password } = credentials(formData)
  const signingUp = formData.get('intent') === 'sign-up'
  if (!email || !password) {
    return { error: { message: 'Enter your email and a password.', detail: null }, notice: null, email }
  }

  const supabase = await createClient()
  if (signingUp) {
    // With `supabase start` email confirmation is off, so this signs you straight in; on a
    // hosted project you may first need to confirm.
    const { data, error } = await supabase.auth.signUp({ email, password })
    if (error) return { error: describe(error), notice: null, email }
    if (!data.session) {
      return { error: null, notice: 'Check your inbox to confirm your email, then sign in.', email }
    }
  } else {
    const { error } = await supabase.auth.signInWithPassword({ email, password })
    if (error) return { error: describe(error), notice: null, email }
  }

  revalidatePath('/', 'layout')
  redirect('/')
}
