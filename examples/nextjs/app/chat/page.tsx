import { redirect } from 'next/navigation'
import ChatPanel from '@/components/chat-panel'
import { createClient } from '@/utils/supabase/server'

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
    <main>
      <h1>Chat</h1>
      <p className="muted">
        Signed in as <strong>{data.user.email ?? data.user.id}</strong> · <a href="/">Profile</a>
      </p>
      <ChatPanel />
    </main>
  )
}
