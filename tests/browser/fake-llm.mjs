// A fake OpenAI-compatible upstream for the chat browser test: POST
// /v1/chat/completions answers with server-sent events, one chunk every 50 ms
// for 2000 chunks, and counts streams open now and streams whose client went
// away before the end. GET /stats reports both.
import { createServer } from 'node:http'

export async function startFakeLlm() {
  const stats = { requests: 0, open: 0, cut: 0 }
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/stats') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(stats))
      return
    }
    if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
      res.writeHead(404).end()
      return
    }
    stats.requests += 1
    req.resume()
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store' })
    stats.open += 1
    let sent = 0
    let ended = false
    const timer = setInterval(() => {
      if (sent === 2000) {
        clearInterval(timer)
        res.end('data: [DONE]\n\n')
        ended = true
        stats.open -= 1
        return
      }
      const chunk = { choices: [{ index: 0, delta: { content: `w${sent} ` } }] }
      res.write(`data: ${JSON.stringify(chunk)}\n\n`)
      sent += 1
    }, 50)
    res.on('close', () => {
      clearInterval(timer)
      if (!ended) {
        stats.open -= 1
        stats.cut += 1
      }
    })
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    stats: () => ({ ...stats }),
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      }),
  }
}
