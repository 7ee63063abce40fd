import Link from 'next/link'

/** The pages a signed-in person moves between. */
export type Section = 'profile' | 'chat'

const SECTIONS: { id: Section; href: string; label: string }[] = [
  { id: 'profile', href: '/', label: 'Profile' },
  { id: 'chat', href: '/chat', label: 'Chat' },
]

/**
 * The bar on top of every page: the app's name, and once signed in the way between the
 * profile and the chat (the current one marked for assistive technology too), who is signed
 * in, and Sign out.
 */
export default function SiteHeader({ email, current }: { email?: string; current?: Section }) {
  return (
    <header className="site-header">
      <div className="inner">
        <Link href="/" className="brand">
          Example app
        </Link>
        {email !== undefined && (
          <>
            <nav className="site-nav" aria-label="Main">
              <ul>
                {SECTIONS.map((s) => (
                  <li key={s.id}>
                    <Link href={s.href} aria-current={s.id === current ? 'page' : undefined}>
                      {s.label}
                    </Link>
                  </li>
                ))}
              </ul>
            </nav>
            <div className="account">
              <span className="who muted">Signed in as {email}</span>
              {/* POST only (see app/auth/signout/route.ts). */}
              <form action="/auth/signout" method="post">
                <button type="submit">Sign out</button>
              </form>
            </div>
          </>
        )}
      </div>
    </header>
  )
}
