// The page under test. Everything it needs comes in the URL fragment (which the
// browser never sends to the static server), e.g.
//   /#op=get&service=http://127.0.0.1:8080&token=eyJ...
//   /#op=put&service=...&token=...&name=Grace%20Hopper
// It calls the service through examples/nextjs/lib/service.ts, served here
// transpiled as /service.js, and writes the outcome into #result.
import { describeFailure, getName, putName } from './service.js'

const params = new URLSearchParams(location.hash.slice(1))
const op = params.get('op') ?? 'get'
const baseUrl = params.get('service') ?? ''
const token = params.get('token') ?? ''
const out = document.getElementById('result')

function show(state, code, text, extra = {}) {
  out.dataset.state = state
  out.dataset.code = code
  for (const [key, value] of Object.entries(extra)) out.dataset[key] = String(value ?? '')
  out.textContent = text
}

async function main() {
  show('loading', '', 'Loading…')
  const result =
    op === 'put'
      ? await putName(token, params.has('name') ? params.get('name') : null, { baseUrl })
      : await getName(token, { baseUrl })
  window.lastResult = result
  if (result.ok) {
    show('ok', 'ok', result.data.full_name ?? '(no name set)', { status: result.status })
  } else {
    const advice = describeFailure(result, baseUrl)
    show('error', result.error, advice.message, {
      status: result.status,
      action: advice.action,
      detail: result.message,
      why: advice.detail,
    })
  }
}

main().catch((err) => show('error', 'page_bug', String(err && err.stack ? err.stack : err)))
