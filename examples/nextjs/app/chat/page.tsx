import type { Metadata } from 'next'
import { redirect } from 'next/navigation'
import ChatPanel from '@/components/chat-panel'
import SiteHeader from '@/components/site-header'
import { createClient } from '@/utils/supabase/server'

export const metadata: Metadata = { title: 'Chat' }

// The chat page (examples/chat on the service side). Signed-out visitors go to
// /login; the panel itself talks to the chat service from the browser with the
// session's access token.
export default async function ChatPage() {
  const supabase = await createClient()
  const { data, error } = await supabase.auth.getUser()
  if (error || !data.user) {
    redirect('/login')
  }
  return (
    <>
      <SiteHeader email={data.user.email ?? data.user.id} current="chat" />
      <main className="chat-page">
        <h1>Chat</h1>
        <ChatPanel />
      </main>
    </>
  )
}
