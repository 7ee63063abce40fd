import { createServerClient } from '@supabase/ssr'
import { NextResponse, type NextRequest } from 'next/server'
import { supabaseEnv } from '@/lib/env'

/** Pages a signed-out visitor may open. Everything else sends them to /login. */
const PUBLIC_PATHS = ['/login', '/auth']

/**
 * Runs before every page: refreshes an expiring Supabase session and writes
 * the new cookies both onto the request (so Server Components rendered for
 * this request see the fresh session) and onto the response (so the browser
 * keeps it).
 */
export async function updateSession(request: NextRequest) {
  const { url, key } = supabaseEnv()
  let response = NextResponse.next({ request })

  const supabase = createServerClient(url, key, {
    cookies: {
      getAll() {
        return request.cookies.getAll()
      },
      setAll(cookiesToSet, headers) {
        for (const { name, value } of cookiesToSet) {
          request.cookies.set(name, value)
        }
        response = NextResponse.next({ request })
        for (const { name, value, options } of cookiesToSet) {
          response.cookies.set(name, value, options)
        }
        // A response that sets auth cookies must never be cached and served
        // to someone else; @supabase/ssr hands us the headers that say so.
        for (const [header, headerValue] of Object.entries(headers)) {
          response.headers.set(header, headerValue)
        }
      },
    },
  })

  // Nothing may run between creating the client and this call: it is what
  // refreshes the session. getClaims() verifies the access token (against the
  // project's key set when it is signed with an asymmetric key, with the Auth
  // server otherwise) and never trusts the cookie blindly.
  const { data } = await supabase.auth.getClaims()
  const signedIn = Boolean(data?.claims)

  const path = request.nextUrl.pathname
  const isPublic = PUBLIC_PATHS.some((p) => path === p || path.startsWith(`${p}/`))
  if (!signedIn && !isPublic) {
    const loginUrl = request.nextUrl.clone()
    loginUrl.pathname = '/login'
    loginUrl.search = ''
    const redirect = NextResponse.redirect(loginUrl)
    // Keep whatever cookies the refresh attempt set (e.g. clearing a dead session).
    for (const cookie of response.cookies.getAll()) {
      redirect.cookies.set(cookie)
    }
    return redirect
  }

  // Return this exact response object (or copy its cookies, as above):
  // returning a fresh NextResponse would drop the refreshed session cookies.
  return response
}
