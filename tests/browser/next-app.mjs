// The built Next.js example under `next start`, with Supabase Auth replaced by
// fake-supabase-auth.mjs: what nextjs.test.mjs (sign-in and profile pages) and
// nextjs-chat.test.mjs (the chat page) share. Each test file starts its own
// `next start` on the app's port and stops it when it ends.
//
// scripts/browser-test builds examples/nextjs with NEXT_PUBLIC_SUPABASE_URL
// pointing at the fake, NEXT_PUBLIC_SERVICE_URL at the service and
// NEXT_PUBLIC_CHAT_URL at the chat example, then passes:
//
//   NEXT_PUBLIC_SUPABASE_URL  where to start the fake Auth (must match the build)
//   NEXT_APP_DIR              the built app (default ../../examples/nextjs)
//   ALLOWED_ORIGIN            the app's origin (default http://localhost:3000)
//
// The tests skip themselves when NEXT_PUBLIC_SUPABASE_URL is not set.
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { launchChromium, saveScreenshot } from './chromium.mjs'
import { startFakeSupabaseAuth } from './fake-supabase-auth.mjs'

export const app = {
  supabaseUrl: process.env.NEXT_PUBLIC_SUPABASE_URL ?? '',
  dir: process.env.NEXT_APP_DIR ?? fileURLToPath(new URL('../../examples/nextjs/', import.meta.url)),
  origin: process.env.ALLOWED_ORIGIN ?? 'http://localhost:3000',
}

/** `skip` option for node:test: a reason when the app was not built for this run. */
export const skipNext = app.supabaseUrl ? false : 'NEXT_PUBLIC_SUPABASE_URL not set (run through scripts/browser-test)'

export const PASSWORD = 'correct horse battery staple'
const TIMEOUT_MS = 20_000

/**
 * Starts the fake Auth with `users` ([{ email, password, accessToken }]), `next start`, and
 * Chromium. Resolves to { chromium, fakeAuth, nextLog(), close() }.
 */
export async function startNextApp(users) {
  if (!existsSync(join(app.dir, '.next', 'BUILD_ID'))) {
    throw new Error(`${app.dir} is not built: run \`npm run build\` there with the NEXT_PUBLIC_* variables`)
  }
  const auth = new URL(app.supabaseUrl)
  const fakeAuth = await startFakeSupabaseAuth({ host: auth.hostname, port: Number(auth.port), users })
  let log = ''
  let next
  let chromium
  try {
    next = await startNext((chunk) => (log += chunk))
    chromium = await launchChromium()
  } catch (err) {
    await stopNext(next)
    await fakeAuth.close()
    throw err
  }
  return {
    chromium,
    fakeAuth,
    nextLog: () => log,
    close: async () => {
      await chromium.close()
      await stopNext(next)
      await fakeAuth.close()
    },
  }
}

async function startNext(onOutput) {
  const port = new URL(app.origin).port || '80'
  const child = spawn(join(app.dir, 'node_modules', '.bin', 'next'), ['start', '-p', port, '-H', '127.0.0.1'], {
    cwd: app.dir,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group, so stopNext() can stop it and its children
  })
  let output = ''
  const collect = (d) => {
    output += d
    onOutput(d)
  }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)

  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`next start exited (${child.exitCode}):\n${output}`)
    try {
      const res = await fetch(`http://127.0.0.1:${port}/login`)
      await res.arrayBuffer()
      if (res.ok) return child
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await stopNext(child)
      throw new Error(`next start did not serve /login within 30 s:\n${output}`)
    }
    await new Promise((r) => setTimeout(r, 300))
  }
}

async function stopNext(child) {
  if (!child) return
  // `next start` may fork workers: end its whole process group, which we created.
  try {
    process.kill(-child.pid, 'SIGTERM')
  } catch {
    // already gone
  }
  await new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve()
    else child.once('exit', resolve)
  })
}

/**
 * A fresh page with no cookies (no session). `run(fn)` runs the test's steps; on a failure it
 * saves a screenshot and adds the browser console, the fake Auth's last calls and the tail of
 * `next start`'s log to the message. When the steps pass it also fails if any request to the
 * app itself was answered 404 (a missing favicon, a broken link, a stale chunk).
 */
export async function freshPage(t, started, { context = started.chromium.context } = {}) {
  await context.clearCookies()
  const page = await context.newPage()
  page.setDefaultTimeout(TIMEOUT_MS)
  const consoleLines = []
  const appNotFound = []
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`))
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`))
  page.on('response', (res) => {
    if (res.status() >= 400) consoleLines.push(`http: ${res.status()} ${res.request().method()} ${res.url()}`)
    if (res.status() === 404 && new URL(res.url()).origin === app.origin) appNotFound.push(res.url())
  })
  const run = async (fn) => {
    try {
      await fn()
      if (appNotFound.length > 0) {
        throw new Error(`the app answered 404 to: ${[...new Set(appNotFound)].join(', ')}`)
      }
    } catch (err) {
      await saveScreenshot(page, `nextjs ${t.name}`)
      err.message +=
        `\nbrowser console:\n  ${consoleLines.join('\n  ') || '(empty)'}` +
        `\nfake auth calls: ${started.fakeAuth.calls.slice(-10).join(', ')}` +
        `\nnext log (tail):\n${started.nextLog().split('\n').slice(-15).join('\n')}`
      throw err
    } finally {
      await page.close()
    }
  }
  return { page, run }
}

/** Signs in through the login page; does not wait for where it lands. */
export async function signIn(page, email, password = PASSWORD) {
  await page.goto(`${app.origin}/login`)
  await page.getByLabel('Email').fill(email)
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
}
