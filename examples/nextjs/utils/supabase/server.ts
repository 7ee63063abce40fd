import { createServerClient } from '@supabase/ssr'
import { cookies } from 'next/headers'
import { supabaseEnv } from '@/lib/env'

/**
 * Supabase client for Server Components, Server Actions and Route Handlers.
 * Make a new one per request: it is bound to that request's cookies.
 */
export async function createClient() {
  // cookies() first: it marks the page as dynamic, so `next build` does not
  // try to prerender signed-in pages (and does not need the env vars).
  const cookieStore = await cookies()
  const { url, key } = supabaseEnv()

  return createServerClient(url, key, {
    cookies: {
      getAll() {
        return cookieStore.getAll()
      },
      setAll(cookiesToSet) {
        try {
          for (const { name, value, options } of cookiesToSet) {
            cookieStore.set(name, value, options)
          }
        } catch {
          // Server Components may not set cookies. That is fine here: the
          // proxy (proxy.ts) has already refreshed the session and written
          // the new cookies before this component rendered.
        }
      },
    },
  })
}
