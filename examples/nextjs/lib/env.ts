// Public configuration, readable on the server and in the browser.
//
// Next.js inlines NEXT_PUBLIC_* variables into the browser bundle only when
// they are written out as `process.env.NEXT_PUBLIC_NAME`, so each one is
// spelled out in full below instead of being looked up by a computed key.

export type SupabaseEnv = { url: string; key: string }

/**
 * The Supabase project URL and its public key. New projects call the key the
 * "publishable key" (sb_publishable_...); older ones and `supabase start`
 * still print an "anon key". Either works here; the publishable one wins.
 *
 * Throws a readable error when unset, at request time rather than at import
 * time, so `next build` passes without a .env.local.
 */
export function supabaseEnv(): SupabaseEnv {
  const url = process.env.NEXT_PUBLIC_SUPABASE_URL
  const key =
    process.env.NEXT_PUBLIC_SUPABASE_PUBLISHABLE_KEY ||
    process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY
  if (!url) {
    throw new Error(
      'NEXT_PUBLIC_SUPABASE_URL is not set: put your project URL (e.g. http://127.0.0.1:54321 for `supabase start`) in .env.local',
    )
  }
  if (!key) {
    throw new Error(
      'Neither NEXT_PUBLIC_SUPABASE_PUBLISHABLE_KEY nor NEXT_PUBLIC_SUPABASE_ANON_KEY is set: put your project\'s publishable (or anon) key in .env.local',
    )
  }
  return { url, key }
}

/** True when both Supabase settings are present. */
export function supabaseConfigured(): boolean {
  return Boolean(
    process.env.NEXT_PUBLIC_SUPABASE_URL &&
      (process.env.NEXT_PUBLIC_SUPABASE_PUBLISHABLE_KEY ||
        process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY),
  )
}
