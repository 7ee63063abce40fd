import { createBrowserClient } from '@supabase/ssr'
import { supabaseEnv } from '@/lib/env'

/**
 * Supabase client for Client Components. It keeps the session in cookies
 * (not localStorage), so the server client and the proxy see the same session.
 * createBrowserClient returns one shared instance per page, so calling this
 * in several components is cheap.
 */
export function createClient() {
  const { url, key } = supabaseEnv()
  return createBrowserClient(url, key)
}
