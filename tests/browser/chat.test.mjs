// Browser end-to-end test of the chat example (examples/chat) and the Next.js
// example's chat client (examples/nextjs/lib/chat.ts), in headless Chromium:
// the answer renders while it streams, a second user sees none of the first
// user's conversations, a 429 shows its wait, and Stop ends the upstream
// request (a fake OpenAI-compatible upstream sees its connection close).
//
// scripts/browser-test passes:
//   CHAT_BIN         the built example (target/debug/examples/chat)
//   CHAT_JWT_SECRET  the HS256 secret the example is started with (tokens are signed here)
//   ALLOWED_ORIGIN   the page's origin, put in the example's CORS_ALLOWED_ORIGINS
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHmac, randomUUID } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'
import { launchChromium, saveScreenshot, snapshot } from './chromium.mjs'
import { startFakeLlm } from './fake-llm.mjs'
import { transpileServiceHelper } from './static-server.mjs'

const env = {
  chatBin: process.env.CHAT_BIN ?? '',
  secret: process.env.CHAT_JWT_SECRET ?? '',
  origin: process.env.ALLOWED_ORIGIN ?? 'http://localhost:3000',
}
const here = (p) => fileURLToPath(new URL(p, import.meta.url))
const TIMEOUT_MS = 15_000

let chromium
let pageServer
let fake
let local // the example with the built-in local model
let remote // the example pointed at the fake upstream
const work = mkdtempSync(join(tmpdir(), 'chat-browser-'))

function token(sub) {
  const now = Math.floor(Date.now() / 1000)
  const encode = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const claims = { sub, aud: 'authenticated', role: 'authenticated', email: `${sub}@example.com`, is_anonymous: false, iat: now, exp: now + 3600 }
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`
  return `${input}.${createHmac('sha256', Buffer.from(env.secret, 'utf8')).update(input).digest('base64url')}`
}

function transpile(file) {
  const { outputText, diagnostics } = ts.transpileModule(readFileSync(file, 'utf8'), {
    fileName: file,
    reportDiagnostics: true,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  })
  if (diagnostics?.length) throw new Error(`cannot transpile ${file}`)
  return outputText
}

async function startPageServer() {
  const service = transpileServiceHelper()
  const files = new Map([
    ['/chat.html', ['text/html; charset=utf-8', readFileSync(here('./page/chat.html'))]],
    ['/chat-app.js', ['text/javascript; charset=utf-8', readFileSync(here('./page/chat-app.js'))]],
    ['/chat.js', ['text/javascript; charset=utf-8', transpile(here('../../examples/nextjs/lib/chat.ts'))]],
    // lib/chat.ts imports './service' (no extension, as TypeScript writes it).
    ['/service', ['text/javascript; charset=utf-8', service]],
  ])
  const port = Number(new URL(env.origin).port || 80)
  const servers = []
  for (const host of ['127.0.0.1', '::1']) {
    const server = createServer((req, res) => {
      const file = files.get(new URL(req.url ?? '/', 'http://x').pathname)
      if (!file) return res.writeHead(404).end()
      res.writeHead(200, { 'content-type': file[0], 'cache-control': 'no-store' }).end(file[1])
    })
    try {
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, resolve)
      })
      servers.push(server)
    } catch (err) {
      if (host === '127.0.0.1') throw err
    }
  }
  return { close: () => Promise.all(servers.map((s) => new Promise((r) => { s.closeAllConnections(); s.close(r) }))) }
}

/** Starts the chat example; resolves with its base URL once it prints where it listens. */
function startChat(name, extra) {
  const child = spawn(env.chatBin, [], {
    cwd: work,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      PATH: process.env.PATH,
      HOST: '127.0.0.1',
      PORT: '0',
      METRICS_ADDR: 'off',
      RUST_LOG: process.env.RUST_LOG ?? 'warn',
      DATABASE_URL: `sqlite://${join(work, `${name}.db`)}`,
      SUPABASE_JWT_SECRET: env.secret,
      CORS_ALLOWED_ORIGINS: env.origin,
      ...extra,
    },
  })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name}: no "chat listening on" line within 60 s`)), 60_000)
    let seen = ''
    child.stdout.on('data', (chunk) => {
      seen += chunk
      const match = /chat listening on (http:\/\/\S+)/.exec(seen)
      if (match) {
        clearTimeout(timer)
        resolve({ url: match[1], stop: () => child.kill('SIGTERM') })
      }
    })
    child.on('exit', (code) => reject(new Error(`${name} exited with ${code}`)))
  })
}

before(async () => {
  const missing = ['CHAT_BIN', 'CHAT_JWT_SECRET'].filter((n) => !process.env[n])
  if (missing.length) throw new Error(`${missing.join(', ')} not set: run this test through scripts/browser-test`)
  fake = await startFakeLlm()
  ;[local, remote] = await Promise.all([
    startChat('local', { CHAT_LOCAL_DELAY_MS: '200', CHAT_RPM: '2' }),
    startChat('remote', { LLM_BASE_URL: `${fake.url}/v1` }),
  ])
  pageServer = await startPageServer()
  chromium = await launchChromium()
})

after(async () => {
  await chromium?.close()
  await pageServer?.close()
  local?.stop()
  remote?.stop()
  await fake?.close()
  rmSync(work, { recursive: true, force: true })
})

/** Opens the chat page as `sub` against `baseUrl`; the token is handed in by script, not URL. */
async function openPage(t, baseUrl, sub) {
  const page = await chromium.context.newPage()
  await page.addInitScript((chat) => {
    window.__chat = chat
  }, { baseUrl, token: token(sub) })
  t.after(async () => {
    if (t.passed === false) await saveScreenshot(page, t.name)
    await page.close()
  })
  await page.goto(`${env.origin}/chat.html`)
  await page.waitForSelector('#conversations[data-loaded="true"]', { state: 'attached', timeout: TIMEOUT_MS })
  return page
}

async function send(page, message) {
  await page.fill('#message', message)
  await page.click('#send')
}

test('the answer is on screen while it streams, then whole; a second user sees none of it', async (t) => {
  const alice = randomUUID()
  const page = await openPage(t, local.url, alice)
  const words = 'one two three four five six seven eight nine ten'
  await send(page, words)
  // A partial state: the first word is shown while the stream is still going.
  await page.waitForFunction(() => document.getElementById('answer').textContent.includes('one'), null, { timeout: TIMEOUT_MS })
  const partial = await page.evaluate(() => ({
    text: document.getElementById('answer').textContent,
    state: document.getElementById('answer').dataset.state,
  }))
  assert.equal(partial.state, 'streaming', 'the first words arrived only with the end of the stream')
  assert.ok(!partial.text.includes('ten'), `already complete: ${partial.text}`)
  await snapshot(page, 'chat-partial')
  await page.waitForSelector('#answer[data-state="done"]', { state: 'attached', timeout: TIMEOUT_MS })
  assert.equal(await page.textContent('#answer'), words)
  await page.waitForSelector('#conversations[data-count="1"]', { state: 'attached', timeout: TIMEOUT_MS })
  assert.equal(await page.textContent('#conversations li'), words)

  const bob = await openPage(t, local.url, randomUUID())
  assert.equal(await bob.getAttribute('#conversations', 'data-count'), '0')
})

// The quota counts requests per clock minute: three requests that straddle a minute boundary
// fall into two windows, so start well inside a minute (waits at most ~20 s).
async function awayFromAMinuteBoundary() {
  const intoMinute = Date.now() % 60_000
  if (intoMinute > 40_000) await new Promise((r) => setTimeout(r, 60_000 - intoMinute + 500))
}

test('over the quota the page shows 429 with the wait', async (t) => {
  await awayFromAMinuteBoundary()
  const page = await openPage(t, local.url, randomUUID())
  for (const word of ['first', 'second']) {
    await send(page, word)
    await page.waitForSelector('#answer[data-state="done"]', { state: 'attached', timeout: TIMEOUT_MS })
  }
  await send(page, 'third')
  await page.waitForSelector('#answer[data-state="error"]', { state: 'attached', timeout: TIMEOUT_MS })
  assert.equal(await page.getAttribute('#status', 'data-code'), 'rate_limited')
  assert.match(await page.textContent('#status'), /try again in \d+ seconds/)
})

test('Stop ends the stream and the upstream request', async (t) => {
  const page = await openPage(t, remote.url, randomUUID())
  await send(page, 'a long answer please')
  await page.waitForFunction(() => document.getElementById('answer').textContent.includes('w3 '), null, { timeout: TIMEOUT_MS })
  assert.equal(fake.stats().open, 1)
  await page.click('#stop')
  await page.waitForSelector('#answer[data-state="stopped"]', { state: 'attached', timeout: TIMEOUT_MS })
  const deadline = Date.now() + 2000
  while (fake.stats().open !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  assert.deepEqual(
    { open: fake.stats().open, cut: fake.stats().cut },
    { open: 0, cut: 1 },
    'the upstream request was still open 2 s after Stop',
  )
  // The cut answer was stored, marked incomplete, and is listed.
  await page.waitForSelector('#conversations[data-count="1"]', { state: 'attached', timeout: TIMEOUT_MS })
})
