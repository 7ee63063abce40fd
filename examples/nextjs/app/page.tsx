import { redirect } from 'next/navigation'
import NameCard from '@/components/name-card'
import { createClient } from '@/utils/supabase/server'

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
    <main>
      <h1>Your profile</h1>
      <p className="muted">
        Signed in to Supabase as <strong>{data.user.email ?? data.user.id}</strong>
      </p>

      {/* The browser calls the service itself, with its own access token. */}
      <NameCard />

      <form action="/auth/signout" method="post">
        <button type="submit">Sign out</button>
      </form>
    </main>
  )
}
