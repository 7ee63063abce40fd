// The Next.js example itself, in headless Chromium: sign in through its login
// page, see the name the real service returns, change it, move to the chat and
// back, sign out; and every state of those pages (a wrong password, no profile,
// a rejected token, the service out of reach) as a person meets it: worded for
// people, nothing typed lost, checked by axe-core in light and dark mode and
// photographed at desktop and mobile size (chromium.mjs captureState).
//
// Supabase Auth is replaced by fake-supabase-auth.mjs (there is no Supabase
// stack here); it hands out tokens minted by the service's `mint`, so the
// browser -> service leg is real. Besides next-app.mjs's variables:
//
//   SERVICE_URL, TOKEN_VALID, TOKEN_NO_PROFILE  as for name.test.mjs
//   TOKEN_BAD_SIGNATURE       (optional) a token the service rejects: 401 invalid_token
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { captureState } from './chromium.mjs'
import { app, freshPage, PASSWORD, signIn, skipNext as skip, startNextApp } from './next-app.mjs'

const env = {
  serviceUrl: (process.env.SERVICE_URL ?? '').replace(/\/+$/, ''),
  tokenValid: process.env.TOKEN_VALID ?? '',
  tokenNoProfile: process.env.TOKEN_NO_PROFILE ?? '',
  tokenBadSignature: process.env.TOKEN_BAD_SIGNATURE ?? '',
}

/**
 * What the pages must not put in front of a person outside an element marked
 * `data-detail` (the technical detail, in smaller print under a sentence for people).
 */
const DEVELOPER_WORDING = [/public\.users/, /\bJSON\b/, /\bCORS\b/, /from the service/i, /\brow\b/, /full_name/]

let started

before(async () => {
  if (skip) return
  for (const name of ['SERVICE_URL', 'TOKEN_VALID', 'TOKEN_NO_PROFILE']) {
    if (!process.env[name]) throw new Error(`${name} not set: run this test through scripts/browser-test`)
  }
  const users = [
    { email: 'ada@example.com', password: PASSWORD, accessToken: env.tokenValid },
    { email: 'nobody@example.com', password: PASSWORD, accessToken: env.tokenNoProfile },
  ]
  if (env.tokenBadSignature) {
    users.push({ email: 'mallory@example.com', password: PASSWORD, accessToken: env.tokenBadSignature })
  }
  started = await startNextApp(users)
})

after(async () => {
  await started?.close()
})

async function serviceName() {
  const res = await fetch(`${env.serviceUrl}/name`, { headers: { Authorization: `Bearer ${env.tokenValid}` } })
  assert.equal(res.status, 200)
  return (await res.json()).full_name
}

/** The page's main text without the technical details, and the developer terms found in it. */
async function developerWordingShown(page) {
  const text = await page.locator('body').evaluate((body) => {
    const copy = body.cloneNode(true)
    for (const el of copy.querySelectorAll('[data-detail], script, style')) el.remove()
    return copy.textContent ?? ''
  })
  return DEVELOPER_WORDING.filter((re) => re.test(text)).map((re) => `${re} in "${text.replace(/\s+/g, ' ').trim()}"`)
}

test('next: a signed-out visitor is sent to /login', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    await page.goto(`${app.origin}/`)
    await page.waitForURL(`${app.origin}/login`)
    assert.equal(await page.getByRole('heading', { level: 1 }).textContent(), 'Sign in')
    // A favicon the browser can load (the browser's own request for it is not the page's, so
    // it is fetched here).
    const icon = await page.locator('link[rel~="icon"]').first().getAttribute('href', { timeout: 1000 }).catch(() => null)
    assert.ok(icon, 'no <link rel="icon">: browsers ask for /favicon.ico and get a 404')
    const res = await page.request.get(new URL(icon, page.url()).href)
    assert.equal(res.status(), 200)
    assert.match(res.headers()['content-type'] ?? '', /^image\//)
    await captureState(page, 'login')
  })
})

test('next: a wrong password keeps the email typed and says what to do', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    await signIn(page, 'ada@example.com', 'wrong password')
    const alert = page.locator('main').getByRole('alert')
    await alert.waitFor()
    assert.equal(await page.getByLabel('Email').inputValue(), 'ada@example.com', 'the email typed was thrown away')
    assert.match(await alert.textContent(), /email or password/i)
    assert.equal(new URL(page.url()).pathname, '/login')
    await captureState(page, 'login-wrong-password')
    // It still signs in from here, without typing the email again.
    await page.getByLabel('Password').fill(PASSWORD)
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.waitForURL(`${app.origin}/`)
  })
})

test('next: sign in, see and change the name, go to the chat and back, sign out', { skip }, async (t) => {
  const expected = await serviceName()
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    // Watch the browser's own call to the service.
    const serviceCall = page.waitForResponse((r) => r.url() === `${env.serviceUrl}/name` && r.request().method() === 'GET')
    await signIn(page, 'ada@example.com')
    await page.waitForURL(`${app.origin}/`)
    await page.getByText('Signed in as ada@example.com').waitFor()

    const response = await serviceCall
    assert.equal(response.status(), 200)
    assert.equal(await response.request().headerValue('authorization'), `Bearer ${env.tokenValid}`)
    // The name is shown once, in the field that changes it.
    const field = page.getByLabel('Your name')
    await page.locator('form[data-state="loaded"]').waitFor()
    assert.equal(await field.inputValue(), expected ?? '')
    assert.equal(await page.getByText(expected, { exact: true }).count(), 0, 'the name is shown twice')
    assert.deepEqual(await developerWordingShown(page), [])
    await captureState(page, 'profile')

    // PUT /name through the form; "Saved" sits on Save's line.
    const newName = 'Ada King, Countess of Lovelace'
    await field.fill(newName)
    const save = page.getByRole('button', { name: 'Save' })
    await save.click()
    const saved = page.getByRole('status').filter({ hasText: 'Saved' })
    await saved.waitFor()
    assert.equal(await field.inputValue(), newName)
    assert.equal(await serviceName(), newName)
    const [saveBox, savedBox] = [await save.boundingBox(), await saved.boundingBox()]
    const middle = (b) => b.y + b.height / 2
    assert.ok(Math.abs(middle(saveBox) - middle(savedBox)) <= 4, `"Saved" is not aligned with Save: ${JSON.stringify({ saveBox, savedBox })}`)
    await captureState(page, 'profile-saved')

    // A name the service refuses: the page says why, and keeps both the old name and the text.
    await field.evaluate((input) => input.removeAttribute('maxlength'))
    const tooLong = 'y'.repeat(201)
    await field.fill(tooLong)
    await save.click()
    await page.locator('main').getByRole('alert').filter({ hasText: 'That name' }).waitFor()
    assert.equal(await field.inputValue(), tooLong)
    assert.equal(await serviceName(), newName)
    assert.deepEqual(await developerWordingShown(page), [])
    await captureState(page, 'profile-name-rejected')

    // A way to the chat and back, the current page marked.
    const nav = page.getByRole('navigation')
    assert.equal(await nav.getByRole('link', { name: 'Profile' }).getAttribute('aria-current'), 'page')
    await nav.getByRole('link', { name: 'Chat' }).click()
    await page.waitForURL(`${app.origin}/chat`)
    assert.equal(await nav.getByRole('link', { name: 'Chat' }).getAttribute('aria-current'), 'page')
    await nav.getByRole('link', { name: 'Profile' }).click()
    await page.waitForURL(`${app.origin}/`)

    await page.getByRole('button', { name: 'Sign out' }).click()
    await page.waitForURL(`${app.origin}/login`)
    await page.goto(`${app.origin}/`)
    await page.waitForURL(`${app.origin}/login`)
  })
})

test('next: a user with no profile row reads "No profile yet", in words for people', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    await signIn(page, 'nobody@example.com')
    await page.waitForURL(`${app.origin}/`)
    await page.locator('main').getByRole('alert').filter({ hasText: 'No profile yet' }).waitFor()
    assert.deepEqual(await developerWordingShown(page), [])
    await captureState(page, 'profile-no-profile')
  })
})

test('next: a token the service rejects (401) says "sign in again" and links to /login', {
  skip: skip || (env.tokenBadSignature ? false : 'TOKEN_BAD_SIGNATURE not set'),
}, async (t) => {
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    await signIn(page, 'mallory@example.com')
    await page.waitForURL(`${app.origin}/`)
    const alert = page.locator('main').getByRole('alert').filter({ hasText: 'Your session expired' })
    await alert.waitFor()
    assert.equal(await alert.getByRole('link', { name: 'Sign in again' }).getAttribute('href'), '/login')
    await captureState(page, 'profile-session-expired')
  })
})

// The service allows only http://localhost:3000: the same app opened as http://127.0.0.1:3000
// is refused by the browser (no Access-Control-Allow-Origin), which a page sees exactly as a
// service that is down (a TypeError from fetch). So this is the "cannot reach it" state,
// produced by the real service and the real browser.
test('next: the service out of reach reads as such, with a retry, and CORS only in the detail', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  const otherOrigin = app.origin.replace('//localhost:', '//127.0.0.1:')
  assert.notEqual(otherOrigin, app.origin)
  await run(async () => {
    await page.goto(`${otherOrigin}/login`)
    await page.getByLabel('Email').fill('ada@example.com')
    await page.getByLabel('Password').fill(PASSWORD)
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.waitForURL(`${otherOrigin}/`)
    const alert = page.locator('main').getByRole('alert')
    await alert.waitFor()
    assert.match(await alert.textContent(), /couldn.t reach/i)
    await alert.getByRole('button', { name: 'Try again' }).waitFor()
    assert.deepEqual(await developerWordingShown(page), [])
    await captureState(page, 'profile-service-unreachable')
  })
})
