// The Next.js example itself, in headless Chromium: sign in through its login
// page, see the name the real service returns, change it, sign out.
//
// Supabase Auth is replaced by fake-supabase-auth.mjs (there is no Supabase
// stack here); it hands out tokens minted by the service's `mint`, so the
// browser -> service leg is real. scripts/browser-test builds examples/nextjs
// with NEXT_PUBLIC_SUPABASE_URL pointing at the fake and NEXT_PUBLIC_SERVICE_URL
// at the service, then runs this file with, besides name.test.mjs's variables:
//
//   NEXT_PUBLIC_SUPABASE_URL  where to start the fake Auth (must match the build)
//   NEXT_APP_DIR              the built app (default ../../examples/nextjs)
//   TOKEN_BAD_SIGNATURE       (optional) a token the service rejects: 401 invalid_token
//
// Skipped as a whole when NEXT_PUBLIC_SUPABASE_URL is not set.
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { launchChromium, saveScreenshot, snapshot } from './chromium.mjs'
import { startFakeSupabaseAuth } from './fake-supabase-auth.mjs'

const env = {
  supabaseUrl: process.env.NEXT_PUBLIC_SUPABASE_URL ?? '',
  appDir: process.env.NEXT_APP_DIR ?? fileURLToPath(new URL('../../examples/nextjs/', import.meta.url)),
  serviceUrl: (process.env.SERVICE_URL ?? '').replace(/\/+$/, ''),
  tokenValid: process.env.TOKEN_VALID ?? '',
  tokenNoProfile: process.env.TOKEN_NO_PROFILE ?? '',
  tokenBadSignature: process.env.TOKEN_BAD_SIGNATURE ?? '',
  appOrigin: process.env.ALLOWED_ORIGIN ?? 'http://localhost:3000',
}
const skip = env.supabaseUrl ? false : 'NEXT_PUBLIC_SUPABASE_URL not set (run through scripts/browser-test)'
const PASSWORD = 'correct horse battery staple'
const TIMEOUT_MS = 20_000

let chromium
let fakeAuth
let nextServer
let nextLog = ''

before(async () => {
  if (skip) return
  for (const name of ['SERVICE_URL', 'TOKEN_VALID', 'TOKEN_NO_PROFILE']) {
    if (!process.env[name]) throw new Error(`${name} not set: run this test through scripts/browser-test`)
  }
  if (!existsSync(join(env.appDir, '.next', 'BUILD_ID'))) {
    throw new Error(`${env.appDir} is not built: run \`npm run build\` there with the NEXT_PUBLIC_* variables`)
  }

  const users = [
    { email: 'ada@example.com', password: PASSWORD, accessToken: env.tokenValid },
    { email: 'nobody@example.com', password: PASSWORD, accessToken: env.tokenNoProfile },
  ]
  if (env.tokenBadSignature) {
    users.push({ email: 'mallory@example.com', password: PASSWORD, accessToken: env.tokenBadSignature })
  }
  const auth = new URL(env.supabaseUrl)
  fakeAuth = await startFakeSupabaseAuth({ host: auth.hostname, port: Number(auth.port), users })

  nextServer = await startNext()
  chromium = await launchChromium()
})

after(async () => {
  await chromium?.close()
  if (nextServer) {
    // `next start` may fork workers: end its whole process group, which we created.
    try {
      process.kill(-nextServer.pid, 'SIGTERM')
    } catch {
      // already gone
    }
    await new Promise((resolve) => {
      if (nextServer.exitCode !== null || nextServer.signalCode !== null) resolve()
      else nextServer.once('exit', resolve)
    })
  }
  await fakeAuth?.close()
})

async function startNext() {
  const port = new URL(env.appOrigin).port || '80'
  const child = spawn(join(env.appDir, 'node_modules', '.bin', 'next'), ['start', '-p', port, '-H', '127.0.0.1'], {
    cwd: env.appDir,
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1', NODE_ENV: 'production' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group, so after() can stop it and its children
  })
  child.stdout.on('data', (d) => (nextLog += d))
  child.stderr.on('data', (d) => (nextLog += d))

  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`next start exited (${child.exitCode}):\n${nextLog}`)
    try {
      const res = await fetch(`http://127.0.0.1:${port}/login`)
      await res.arrayBuffer()
      if (res.ok) return child
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`next start did not serve /login within 30 s:\n${nextLog}`)
    await new Promise((r) => setTimeout(r, 300))
  }
}

/** A fresh page with no cookies (no session), and a helper to fail with context. */
async function freshPage(t) {
  await chromium.context.clearCookies()
  const page = await chromium.context.newPage()
  page.setDefaultTimeout(TIMEOUT_MS)
  const consoleLines = []
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`))
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`))
  const run = async (fn) => {
    try {
      await fn()
    } catch (err) {
      await saveScreenshot(page, `nextjs ${t.name}`)
      err.message +=
        `\nbrowser console:\n  ${consoleLines.join('\n  ') || '(empty)'}` +
        `\nfake auth calls: ${fakeAuth.calls.slice(-10).join(', ')}` +
        `\nnext log (tail):\n${nextLog.split('\n').slice(-15).join('\n')}`
      throw err
    } finally {
      await page.close()
    }
  }
  return { page, run }
}

async function signIn(page, email, password = PASSWORD) {
  await page.goto(`${env.appOrigin}/login`)
  await page.getByLabel('Email').fill(email)
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
}

async function serviceName() {
  const res = await fetch(`${env.serviceUrl}/name`, { headers: { Authorization: `Bearer ${env.tokenValid}` } })
  assert.equal(res.status, 200)
  return (await res.json()).full_name
}

test('next: a signed-out visitor is sent to /login', { skip }, async (t) => {
  const { page, run } = await freshPage(t)
  await run(async () => {
    await page.goto(`${env.appOrigin}/`)
    await page.waitForURL(`${env.appOrigin}/login`)
    assert.equal(await page.getByRole('heading', { level: 1 }).textContent(), 'Sign in')
  })
})

test('next: a wrong password shows the Auth error on the login page', { skip }, async (t) => {
  const { page, run } = await freshPage(t)
  await run(async () => {
    await signIn(page, 'ada@example.com', 'wrong password')
    await page.getByRole('alert').filter({ hasText: 'Invalid login credentials' }).waitFor()
    await snapshot(page, 'nextjs-login-error')
    assert.equal(new URL(page.url()).pathname, '/login')
  })
})

test('next: sign in, see the name from the service, change it, sign out', { skip }, async (t) => {
  const expected = await serviceName()
  const { page, run } = await freshPage(t)
  await run(async () => {
    // Watch the browser's own call to the service.
    const serviceCall = page.waitForResponse((r) => r.url() === `${env.serviceUrl}/name` && r.request().method() === 'GET')
    await signIn(page, 'ada@example.com')
    await page.waitForURL(`${env.appOrigin}/`)
    await page.getByText('Signed in to Supabase as ada@example.com').waitFor()

    const response = await serviceCall
    assert.equal(response.status(), 200)
    assert.equal(await response.request().headerValue('authorization'), `Bearer ${env.tokenValid}`)
    const shown = page.getByTestId('full-name')
    await shown.waitFor()
    assert.equal(await shown.textContent(), expected ?? '(no name set)')
    await snapshot(page, 'nextjs-signed-in')

    // PUT /name through the form.
    const newName = 'Ada King, Countess of Lovelace'
    await page.getByLabel('Full name').fill(newName)
    await page.getByRole('button', { name: 'Save' }).click()
    await page.getByRole('status').filter({ hasText: 'Saved.' }).waitFor()
    assert.equal(await shown.textContent(), newName)
    assert.equal(await serviceName(), newName)

    // A name the service refuses: the page says why, and keeps the old one.
    await page.getByLabel('Full name').evaluate((input) => input.removeAttribute('maxlength'))
    await page.getByLabel('Full name').fill('y'.repeat(201))
    await page.getByRole('button', { name: 'Save' }).click()
    await page.getByRole('alert').filter({ hasText: 'That name was not accepted' }).waitFor()
    await snapshot(page, 'nextjs-name-rejected')
    assert.equal(await serviceName(), newName)

    await page.getByRole('button', { name: 'Sign out' }).click()
    await page.waitForURL(`${env.appOrigin}/login`)
    await page.goto(`${env.appOrigin}/`)
    await page.waitForURL(`${env.appOrigin}/login`)
  })
})

test('next: a user with no profile row sees "No profile yet"', { skip }, async (t) => {
  const { page, run } = await freshPage(t)
  await run(async () => {
    await signIn(page, 'nobody@example.com')
    await page.waitForURL(`${env.appOrigin}/`)
    await page.getByRole('alert').filter({ hasText: 'No profile yet' }).waitFor()
    await snapshot(page, 'nextjs-no-profile')
  })
})

test('next: a token the service rejects (401) says "sign in again" and links to /login', {
  skip: skip || (env.tokenBadSignature ? false : 'TOKEN_BAD_SIGNATURE not set'),
}, async (t) => {
  const { page, run } = await freshPage(t)
  await run(async () => {
    await signIn(page, 'mallory@example.com')
    await page.waitForURL(`${env.appOrigin}/`)
    const alert = page.getByRole('alert').filter({ hasText: 'Your session expired, sign in again.' })
    await alert.waitFor()
    await snapshot(page, 'nextjs-session-expired')
    assert.equal(await alert.getByRole('link', { name: 'Sign in again' }).getAttribute('href'), '/login')
  })
})
