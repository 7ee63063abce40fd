// The driver of scripts/chat-loadtest (read that first). Everything listens on 127.0.0.1.
import { spawn } from 'node:child_process'
import { createHmac, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const STREAMS = Number(process.env.STREAMS ?? 200)
const CHUNKS = Number(process.env.CHUNKS ?? 200)
const CHUNK_MS = Number(process.env.CHUNK_MS ?? 10)
const CUT_AFTER = Math.floor(CHUNKS / 4)
const SECRET = 'chat-loadtest-secret-0123456789abcdef-0123456789abcdef'
const PHASE_LIMIT_MS = 60_000
const CLK_TCK = 100 // Linux's USER_HZ, what /proc/PID/stat counts in

// --- a fake OpenAI-compatible upstream that counts its open connections --------------------
let openConnections = 0
const upstream = createServer((req, res) => {
  req.resume()
  res.writeHead(200, { 'content-type': 'text/event-stream' })
  let sent = 0
  const write = () => {
    if (sent === CHUNKS) {
      res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 1, completion_tokens: CHUNKS } })}\n\n`)
      res.end('data: [DONE]\n\n')
      return
    }
    res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: `w${sent} ` } }] })}\n\n`)
    sent += 1
    timer = setTimeout(write, CHUNK_MS)
  }
  let timer = null
  write() // the first chunk at once: what a client waits beyond that is the service's doing
  res.on('close', () => clearTimeout(timer))
})
upstream.on('connection', (socket) => {
  openConnections += 1
  socket.on('close', () => {
    openConnections -= 1
  })
})
upstream.keepAliveTimeout = 1
await new Promise((resolve) => upstream.listen(0, '127.0.0.1', resolve))
const upstreamUrl = `http://127.0.0.1:${upstream.address().port}`

// --- the service -----------------------------------------------------------------------------
const work = mkdtempSync(join(tmpdir(), 'chat-loadtest-'))
const child = spawn(process.env.CHAT_BIN, [], {
  cwd: work,
  stdio: ['ignore', 'pipe', 'inherit'],
  env: {
    PATH: process.env.PATH,
    HOST: '127.0.0.1',
    PORT: '0',
    METRICS_ADDR: 'off',
    RUST_LOG: 'error',
    DATABASE_URL: `sqlite://${join(work, 'chat.db')}`,
    DB_TIMEOUT_SECONDS: '20',
    SUPABASE_JWT_SECRET: SECRET,
    LLM_BASE_URL: `${upstreamUrl}/v1`,
    CHAT_RPM: '1000000',
    CHAT_TOKENS_PER_DAY: '1000000000',
    CHAT_MAX_STREAMS: '1000',
  },
})
const serviceUrl = await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('the example did not start within 60 s')), 60_000)
  let seen = ''
  child.stdout.on('data', (chunk) => {
    seen += chunk
    const match = /chat listening on (http:\/\/\S+)/.exec(seen)
    if (match) {
      clearTimeout(timer)
      resolve(match[1])
    }
  })
  child.on('exit', (code) => reject(new Error(`the example exited with ${code}`)))
})

function token(sub) {
  const now = Math.floor(Date.now() / 1000)
  const encode = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ sub, aud: 'authenticated', role: 'authenticated', iat: now, exp: now + 3600 })}`
  return `${input}.${createHmac('sha256', SECRET).update(input).digest('base64url')}`
}
const tokens = Array.from({ length: STREAMS }, () => token(randomUUID()))

function cpuSeconds() {
  const fields = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1].split(' ')
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
}
function memory() {
  const status = readFileSync(`/proc/${child.pid}/status`, 'utf8')
  const kib = (name) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
  return { rssMiB: kib('VmRSS') / 1024, peakMiB: kib('VmHWM') / 1024 }
}
const percentile = (values, p) => {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

/** One stream: ms to its first text chunk, text chunks seen, and how it ended. Events end
 *  in a blank line; through the service the first is `meta`, so text starts at the second. */
async function stream(url, init, cutAfter, firstText) {
  const controller = new AbortController()
  const started = performance.now()
  const response = await fetch(url, { ...init, signal: controller.signal })
  if (response.status !== 200) return { ok: false, status: response.status }
  const reader = response.body.getReader()
  const decoder = new TextDecoder()
  let ttfb = null
  let events = 0
  let last = ''
  let errored = false
  for (;;) {
    const { value, done } = await reader.read()
    if (done) break
    const piece = last + decoder.decode(value, { stream: true })
    events += piece.split('\n\n').length - 1
    last = piece.endsWith('\n') ? '\n' : ''
    if (piece.includes('event: error')) errored = true
    if (ttfb === null && events >= firstText) ttfb = performance.now() - started
    const chunks = Math.max(0, events - firstText + 1)
    if (cutAfter !== null && chunks >= cutAfter) {
      controller.abort()
      return { ok: true, ttfb, chunks, cut: true }
    }
  }
  // Through the service: meta, the deltas, done. Straight from the fake: chunks, usage, [DONE].
  const chunks = Math.max(0, events - firstText + 1 - (firstText === 2 ? 1 : 2))
  return { ok: !errored, ttfb, chunks, cut: false }
}

const chat = (i, cutAfter = null) =>
  stream(
    `${serviceUrl}/chat`,
    {
      method: 'POST',
      headers: { authorization: `Bearer ${tokens[i]}`, 'content-type': 'application/json' },
      body: JSON.stringify({ message: 'load test' }),
    },
    cutAfter,
    2,
  )
const direct = () =>
  stream(`${upstreamUrl}/v1/chat/completions`, { method: 'POST', body: '{}' }, null, 1)

async function phase(name, run) {
  const timer = setTimeout(() => {
    console.error(`chat-loadtest: ${name} took over ${PHASE_LIMIT_MS / 1000} s`)
    process.exit(1)
  }, PHASE_LIMIT_MS)
  try {
    return await run()
  } finally {
    clearTimeout(timer)
  }
}

let failed = false
try {
  // Warm-up (connections, page cache, the SQLite file), then the baseline straight from the fake.
  await phase('warm-up', () => Promise.all(Array.from({ length: 10 }, (_, i) => chat(i))))
  const baseline = await phase('baseline', () => Promise.all(Array.from({ length: STREAMS }, () => direct())))

  const cpuBefore = cpuSeconds()
  const wall = performance.now()
  const results = await phase('full streams', () => Promise.all(tokens.map((_, i) => chat(i))))
  const wallSeconds = (performance.now() - wall) / 1000
  const cpu = cpuSeconds() - cpuBefore
  const bad = results.filter((r) => !r.ok || r.chunks < CHUNKS)
  const relayed = results.reduce((n, r) => n + (r.chunks ?? 0), 0)
  const viaService = results.filter((r) => r.ttfb !== null).map((r) => r.ttfb)
  const straight = baseline.map((r) => r.ttfb)
  const mem = memory()

  // Cut every stream a quarter of the way in; no upstream connection may outlive that by 1 s.
  await phase('cut streams', () => Promise.all(tokens.map((_, i) => chat(i, CUT_AFTER))))
  const cutAt = performance.now()
  while (openConnections > 0 && performance.now() - cutAt < 1000) await new Promise((r) => setTimeout(r, 10))
  const leftOpen = openConnections
  const closedAfterMs = performance.now() - cutAt

  console.log(`chat-loadtest: ${STREAMS} concurrent streams x ${CHUNKS} chunks, ${CHUNK_MS} ms apart, via ${process.env.CHAT_BIN}`)
  console.log(`  streams complete: ${STREAMS - bad.length}/${STREAMS} (${relayed} chunks relayed in ${wallSeconds.toFixed(1)} s)`)
  console.log(`  time to first delta: direct p50 ${percentile(straight, 50).toFixed(1)} ms p99 ${percentile(straight, 99).toFixed(1)} ms; via service p50 ${percentile(viaService, 50).toFixed(1)} ms p99 ${percentile(viaService, 99).toFixed(1)} ms`)
  console.log(`  added by the service: p50 ${(percentile(viaService, 50) - percentile(straight, 50)).toFixed(1)} ms, p99 ${(percentile(viaService, 99) - percentile(straight, 99)).toFixed(1)} ms`)
  console.log(`  service CPU: ${cpu.toFixed(2)} s for ${relayed} chunks = ${((cpu / Math.max(relayed, 1)) * 1e6).toFixed(1)} µs per chunk`)
  console.log(`  service memory: peak RSS (VmHWM) ${mem.peakMiB.toFixed(1)} MiB, RSS now ${mem.rssMiB.toFixed(1)} MiB`)
  console.log(`  after ${STREAMS} clients cut mid-way: ${leftOpen} upstream connections open (${leftOpen === 0 ? `all closed within ${closedAfterMs.toFixed(0)} ms` : 'after 1 s'})`)
  if (bad.length > 0) {
    failed = true
    console.error(`chat-loadtest: ${bad.length} streams failed, e.g. ${JSON.stringify(bad[0])}`)
  }
  if (leftOpen > 0) {
    failed = true
    console.error(`chat-loadtest: ${leftOpen} upstream connections still open 1 s after the clients went away`)
  }
} finally {
  child.kill('SIGTERM')
  upstream.closeAllConnections()
  upstream.close()
  rmSync(work, { recursive: true, force: true })
}
process.exit(failed ? 1 : 0)
