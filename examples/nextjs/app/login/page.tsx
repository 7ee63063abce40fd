import type { Metadata } from 'next'
import SiteHeader from '@/components/site-header'
import SignInForm from './sign-in-form'

export const metadata: Metadata = { title: 'Sign in' }

export default function LoginPage() {
  return (
    <>
      <SiteHeader />
      <main className="narrow">
        <h1>Sign in</h1>
        <p className="lead muted">Sign in with your email and password, or create an account.</p>
        <div className="card">
          <SignInForm />
        </div>
      </main>
    </>
  )
}
