'use server'

import { revalidatePath } from 'next/cache'
import { redirect } from 'next/navigation'
import { createClient } from '@/utils/supabase/server'

export type SignInState = { error: string | null; notice: string | null }

function credentials(formData: FormData) {
  return {
    email: String(formData.get('email') ?? '').trim(),
    password: String(formData.get('password') ?? ''),
  }
}

/** Email + password sign-in; the server client writes the session cookies. */
export async function signIn(_prev: SignInState, formData: FormData): Promise<SignInState> {
  const { email, password } = credentials(formData)
  if (!email || !password) return { error: 'Enter your email and password.', notice: null }

  const supabase = await createClient()
  const { error } = await supabase.auth.signInWithPassword({ email, password })
  if (error) return { error: error.message, notice: null }

  revalidatePath('/', 'layout')
  redirect('/')
}

/**
 * Creates an account. With `supabase start` email confirmation is off, so this
 * signs you straight in; on a hosted project you may first need to confirm.
 */
export async function signUp(_prev: SignInState, formData: FormData): Promise<SignInState> {
  const { email, password } = credentials(formData)
  if (!email || !password) return { error: 'Enter an email and a password.', notice: null }

  const supabase = await createClient()
  const { data, error } = await supabase.auth.signUp({ email, password })
  if (error) return { error: error.message, notice: null }
  if (!data.session) {
    return { error: null, notice: 'Check your inbox to confirm your email, then sign in.' }
  }

  revalidatePath('/', 'layout')
  redirect('/')
}
