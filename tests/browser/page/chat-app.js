// The chat page under test: sends the textarea through streamChat(), appends
// each delta to #answer as it arrives, shows a 429's wait in #status, lists
// the caller's conversations in #conversations. data-state on #answer says
// where the stream is: streaming, done, stopped, error.
import { listConversations, listConversationsWith, streamChat } from './chat.js'

const { baseUrl, token } = window.__chat
const answer = document.getElementById('answer')
const status = document.getElementById('status')
let controller = null

// `stopped`: the conversation of a stopped answer, stored by the service a moment after the
// abort, so the list is read again until it shows it.
async function refresh(stopped = null) {
  const list = stopped
    ? await listConversationsWith(token, stopped, { baseUrl })
    : await listConversations(token, { baseUrl })
  const ul = document.getElementById('conversations')
  ul.replaceChildren(
    ...(list ?? []).map((c) => {
      const li = document.createElement('li')
      li.textContent = c.title
      li.dataset.id = c.id
      return li
    }),
  )
  ul.dataset.loaded = String(list !== null)
  ul.dataset.count = String(list?.length ?? 0)
}

document.getElementById('form').addEventListener('submit', async (event) => {
  event.preventDefault()
  answer.textContent = ''
  answer.dataset.state = 'streaming'
  status.textContent = ''
  controller = new AbortController()
  const result = await streamChat(token, null, document.getElementById('message').value, {
    baseUrl,
    signal: controller.signal,
    onDelta: (text) => {
      answer.textContent += text
    },
  })
  if (result.ok) {
    answer.dataset.state = 'done'
  } else if (result.error === 'aborted') {
    answer.dataset.state = 'stopped'
  } else {
    answer.dataset.state = 'error'
    status.dataset.code = result.error
    status.textContent =
      result.error === 'rate_limited'
        ? `Too many messages: try again in ${result.retryAfter} seconds.`
        : result.message
  }
  await refresh(!result.ok && result.error === 'aborted' ? result.conversationId : null)
})

document.getElementById('stop').addEventListener('click', () => controller?.abort())

await refresh()
