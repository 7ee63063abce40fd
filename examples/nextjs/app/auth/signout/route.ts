import { revalidatePath } from 'next/cache'
import { NextResponse, type NextRequest } from 'next/server'
import { createClient } from '@/utils/supabase/server'

// POST only: a GET could be triggered by a prefetch or an <img> on another site.
export async function POST(request: NextRequest) {
  const supabase = await createClient()
  await supabase.auth.signOut()

  revalidatePath('/', 'layout')
  // 303 turns the POST into a GET of the login page.
  return NextResponse.redirect(new URL('/login', request.url), { status: 303 })
}
