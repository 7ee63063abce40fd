import type { Metadata } from 'next'
import { redirect } from 'next/navigation'
import NameCard from '@/components/name-card'
import SiteHeader from '@/components/site-header'
import { createClient } from '@/utils/supabase/server'

export const metadata: Metadata = { title: 'Your profile' }

// A Server Component: it runs on the server for every request, reading the
// session from cookies that proxy.ts has just refreshed.
export default async function HomePage() {
  const supabase = await createClient()

  // getUser() asks the Auth server, so a revoked or signed-out session is
  // caught here even if its cookie is still around. (getClaims() would check
  // the token locally against the project's key set: cheaper, also safe.)
  const { data, error } = await supabase.auth.getUser()
  if (error || !data.user) {
    redirect('/login')
  }

  return (
    <>
      <SiteHeader email={data.user.email ?? data.user.id} current="profile" />
      <main className="narrow">
        <h1>Your profile</h1>
        <p className="lead muted">What this app knows about you, and how it addresses you.</p>
        {/* The browser calls the service itself, with its own access token. */}
        <NameCard />
      </main>
    </>
  )
}
