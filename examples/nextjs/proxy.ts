import { type NextRequest } from 'next/server'
import { updateSession } from '@/utils/supabase/proxy'

// Next.js 16 renamed `middleware.ts` to `proxy.ts`; it runs on the Node.js runtime.
export async function proxy(request: NextRequest) {
  return await updateSession(request)
}

export const config = {
  matcher: [
    // Every path except Next's own static files, the favicon and images.
    '/((?!_next/static|_next/image|favicon.ico|.*\\.(?:svg|png|jpg|jpeg|gif|webp|ico)$).*)',
  ],
}
