import type { Metadata } from 'next'
import SignInForm from './sign-in-form'

export const metadata: Metadata = { title: 'Sign in' }

export default function LoginPage() {
  return (
    <main>
      <h1>Sign in</h1>
      <p className="muted">Use an email and password account of your Supabase project.</p>
      <SignInForm />
    </main>
  )
}
