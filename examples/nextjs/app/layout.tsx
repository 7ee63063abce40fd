import type { Metadata, Viewport } from 'next'
import type { ReactNode } from 'react'
import './globals.css'

// The favicon is app/icon.svg: Next.js links it from every page.
export const metadata: Metadata = {
  title: { default: 'Example app', template: '%s · Example app' },
  description: 'Sign in with Supabase Auth, keep your profile, and chat, through supabase-jwt-service.',
}

export const viewport: Viewport = {
  width: 'device-width',
  initialScale: 1,
  colorScheme: 'light dark',
}

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body>{children}</body>
    </html>
  )
}
