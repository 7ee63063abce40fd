// Browser end-to-end test: a page in headless Chromium calls supabase-jwt-service
// from another origin with a Bearer token, the way the Next.js example does.
//
// Run it through scripts/browser-test, which builds the database, starts the
// service and mints the tokens. It passes them in the environment:
//
//   SERVICE_URL       e.g. http://127.0.0.1:41234 (the service under test)
//   TOKEN_VALID       access token of the seeded user
//   TOKEN_EXPIRED     the same user's token, already expired
//   TOKEN_NO_PROFILE  (optional) a valid token for a user with no public.users row
//   EXPECTED_NAME     the seeded full_name (default "Ada Lovelace")
//   ALLOWED_ORIGIN    an origin in the service's CORS_ALLOWED_ORIGINS (default http://localhost:3000)
//   DENIED_ORIGIN     an origin that is not (default http://127.0.0.1:3001)
//   CHROMIUM_PATH     default /usr/bin/chromium
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { launchChromium, saveScreenshot, snapshot } from './chromium.mjs'
import { startStaticServer } from './static-server.mjs'

const env = {
  serviceUrl: (process.env.SERVICE_URL ?? '').replace(/\/+$/, ''),
  tokenValid: process.env.TOKEN_VALID ?? '',
  tokenExpired: process.env.TOKEN_EXPIRED ?? '',
  tokenNoProfile: process.env.TOKEN_NO_PROFILE ?? '',
  expectedName: process.env.EXPECTED_NAME ?? 'Ada Lovelace',
  allowedOrigin: process.env.ALLOWED_ORIGIN ?? 'http://localhost:3000',
  deniedOrigin: process.env.DENIED_ORIGIN ?? 'http://127.0.0.1:3001',
}

const PAGE_TIMEOUT_MS = 15_000

let chromium
let browser // the browser context all pages open in
let staticServer

before(async () => {
  const missing = ['SERVICE_URL', 'TOKEN_VALID', 'TOKEN_EXPIRED'].filter((name) => !process.env[name])
  if (missing.length > 0) {
    throw new Error(`${missing.join(', ')} not set: run this test through scripts/browser-test`)
  }

  // The page is served from both origins: the allowed one and the denied one.
  const allowed = new URL(env.allowedOrigin)
  const denied = new URL(env.deniedOrigin)
  const addresses = [...listenAddresses(allowed), ...listenAddresses(denied)]
  staticServer = await startStaticServer(addresses)

  chromium = await launchChromium()
  browser = chromium.context
})

after(async () => {
  await chromium?.close()
  await staticServer?.close()
})

/** `localhost` may resolve to 127.0.0.1 or ::1 in Chromium: serve both. */
function listenAddresses(url) {
  const port = Number(url.port || 80)
  if (url.hostname === 'localhost') {
    return [
      { host: '127.0.0.1', port },
      { host: '::1', port, optional: true },
    ]
  }
  return [{ host: url.hostname.replace(/^\[|\]$/g, ''), port }]
}

/**
 * Opens the test page at `origin` with the given fragment parameters, records
 * what Chromium's network layer saw of the service (preflights included,
 * through the DevTools protocol), waits for the page's verdict in #result.
 */
async function runPage(t, origin, params) {
  const page = await browser.newPage()
  const network = await recordServiceTraffic(page)
  const consoleLines = []
  page.on('console', (msg) => consoleLines.push(`${msg.type()}: ${msg.text()}`))
  page.on('pageerror', (err) => consoleLines.push(`pageerror: ${err.message}`))

  const hash = new URLSearchParams({ service: env.serviceUrl, ...params }).toString()
  try {
    await page.goto(`${origin}/#${hash}`, { timeout: PAGE_TIMEOUT_MS })
    await page.waitForSelector('#result[data-state="ok"], #result[data-state="error"]', {
      timeout: PAGE_TIMEOUT_MS,
    })
    const result = await page.locator('#result').evaluate((el) => ({ ...el.dataset, text: el.textContent }))
    await snapshot(page, `static ${t.name}`)
    return { page, result, network, consoleLines }
  } catch (err) {
    await saveScreenshot(page, t.name)
    err.message += `\nbrowser console:\n  ${consoleLines.join('\n  ') || '(empty)'}`
    await page.close()
    throw err
  }
}

/** Requests to the service as Chromium's network stack saw them, by request id. */
async function recordServiceTraffic(page) {
  const cdp = await page.context().newCDPSession(page)
  await cdp.send('Network.enable')
  const byId = new Map()
  const entry = (id) => {
    if (!byId.has(id)) byId.set(id, { requestHeaders: {}, responseHeaders: null })
    return byId.get(id)
  }
  cdp.on('Network.requestWillBeSent', (e) => {
    if (!e.request.url.startsWith(env.serviceUrl)) return
    Object.assign(entry(e.requestId), { url: e.request.url, method: e.request.method, type: e.type })
  })
  cdp.on('Network.requestWillBeSentExtraInfo', (e) => {
    entry(e.requestId).requestHeaders = lowerKeys(e.headers)
  })
  cdp.on('Network.responseReceived', (e) => {
    if (!e.response.url.startsWith(env.serviceUrl)) return
    Object.assign(entry(e.requestId), {
      type: e.type, // "Preflight" for the browser's OPTIONS request
      status: e.response.status,
      responseHeaders: lowerKeys(e.response.headers),
    })
  })
  cdp.on('Network.loadingFailed', (e) => {
    Object.assign(entry(e.requestId), { errorText: e.errorText, corsError: e.corsErrorStatus?.corsError })
  })
  return {
    /** Entries for the service only (ids of other URLs never get a url here and drop out). */
    all: () => [...byId.values()].filter((r) => r.url?.startsWith(env.serviceUrl)),
    preflights: () =>
      [...byId.values()].filter((r) => r.method === 'OPTIONS' && r.url?.startsWith(env.serviceUrl)),
    fetches: (method) =>
      [...byId.values()].filter((r) => r.method === method && r.url?.startsWith(`${env.serviceUrl}/name`)),
  }
}

function lowerKeys(headers) {
  return Object.fromEntries(Object.entries(headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]))
}

function describe(network) {
  return JSON.stringify(network.all(), null, 2)
}

test('(a) allowed origin + valid token: the page shows the seeded name', async (t) => {
  const { page, result, network } = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenValid })
  try {
    assert.equal(result.state, 'ok', `page shows an error instead: ${JSON.stringify(result)}`)
    assert.equal(result.text, env.expectedName)
    assert.equal(await page.locator('#result').textContent(), env.expectedName)

    const [get] = network.fetches('GET')
    assert.ok(get, `no GET /name seen:\n${describe(network)}`)
    assert.equal(get.status, 200)
    assert.equal(get.responseHeaders['access-control-allow-origin'], env.allowedOrigin)
    assert.equal(get.requestHeaders.authorization, `Bearer ${env.tokenValid}`)
    assert.equal(get.requestHeaders.origin, env.allowedOrigin)
  } finally {
    await page.close()
  }
})

test('(b) origin not in CORS_ALLOWED_ORIGINS: the browser blocks the call and the page says why', async (t) => {
  const { page, result, network, consoleLines } = await runPage(t, env.deniedOrigin, {
    op: 'get',
    token: env.tokenValid,
  })
  try {
    // What the page sees: fetch() rejected with a TypeError, no status, no body.
    assert.equal(result.state, 'error')
    assert.equal(result.code, 'network_error', JSON.stringify(result))
    assert.equal(result.status, '')
    assert.match(result.detail, /fetch/i, 'a TypeError from fetch ("Failed to fetch")')
    // Words for people first; the likely causes, CORS included, in the detail.
    assert.match(result.text, /Couldn't reach the service/)
    assert.match(result.why, /CORS_ALLOWED_ORIGINS/)

    // Why: the service answered, without Access-Control-Allow-Origin.
    const answered = network.all().filter((r) => r.responseHeaders)
    assert.ok(answered.length > 0, `the service never answered:\n${describe(network)}`)
    for (const response of answered) {
      assert.equal(
        response.responseHeaders['access-control-allow-origin'],
        undefined,
        `${response.method} ${response.url} (${response.type}) carried Access-Control-Allow-Origin`,
      )
    }
    const [get] = network.fetches('GET')
    assert.ok(get, `no GET /name attempted:\n${describe(network)}`)
    assert.equal(get.errorText, 'net::ERR_FAILED')
    assert.match(get.corsError ?? '', /MissingAllowOriginHeader/, `CORS error: ${get.corsError}`)
    assert.ok(
      consoleLines.some((line) => /blocked by CORS policy/.test(line) && /No 'Access-Control-Allow-Origin'/.test(line)),
      `no CORS message in the console:\n${consoleLines.join('\n')}`,
    )
  } finally {
    await page.close()
  }

  // The same, asked directly (no browser): a disallowed Origin gets no CORS grant.
  const direct = await fetch(`${env.serviceUrl}/name`, {
    headers: { Origin: env.deniedOrigin, Authorization: `Bearer ${env.tokenValid}` },
  })
  await direct.arrayBuffer()
  assert.equal(direct.headers.get('access-control-allow-origin'), null)
  const preflight = await fetch(`${env.serviceUrl}/name`, {
    method: 'OPTIONS',
    headers: {
      Origin: env.deniedOrigin,
      'Access-Control-Request-Method': 'GET',
      'Access-Control-Request-Headers': 'authorization',
    },
  })
  await preflight.arrayBuffer()
  assert.equal(preflight.headers.get('access-control-allow-origin'), null)
})

test('(c) expired token: 401 invalid_token, readable to the page, "sign in again"', async (t) => {
  const { page, result, network } = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenExpired })
  try {
    assert.equal(result.state, 'error')
    // If CORS headers were missing on error responses, this would be network_error.
    assert.equal(result.code, 'invalid_token', JSON.stringify(result))
    assert.equal(result.status, '401')
    assert.equal(result.action, 'sign_in')
    assert.equal(result.text, 'Your session expired, sign in again.')

    const [get] = network.fetches('GET')
    assert.equal(get?.status, 401)
    assert.equal(get.responseHeaders['access-control-allow-origin'], env.allowedOrigin)
    assert.match(get.responseHeaders['www-authenticate'] ?? '', /^Bearer\b.*invalid_token/)
  } finally {
    await page.close()
  }
})

test('(d) PUT /name from the allowed origin passes the preflight, then GET shows the new name', async (t) => {
  const newName = 'Grace Hopper'
  const put = await runPage(t, env.allowedOrigin, { op: 'put', token: env.tokenValid, name: newName })
  try {
    assert.equal(put.result.state, 'ok', `PUT failed: ${JSON.stringify(put.result)}`)
    assert.equal(put.result.text, newName)

    // A JSON PUT with Authorization is never a "simple" request: Chromium asks first.
    const preflight = put.network
      .preflights()
      .find((p) => /PUT/i.test(p.requestHeaders['access-control-request-method'] ?? ''))
    assert.ok(preflight, `no preflight for PUT seen:\n${describe(put.network)}`)
    const asked = (preflight.requestHeaders['access-control-request-headers'] ?? '').toLowerCase()
    assert.match(asked, /authorization/)
    assert.match(asked, /content-type/)
    assert.ok(preflight.status >= 200 && preflight.status < 300, `preflight status ${preflight.status}`)
    const granted = preflight.responseHeaders
    assert.equal(granted['access-control-allow-origin'], env.allowedOrigin)
    assert.match(granted['access-control-allow-methods'] ?? '', /PUT|\*/i)
    // "*" does not cover Authorization, so it has to be named.
    assert.match(granted['access-control-allow-headers'] ?? '', /authorization/i)
    assert.match(granted['access-control-allow-headers'] ?? '', /content-type|\*/i)

    const [sent] = put.network.fetches('PUT')
    assert.equal(sent?.status, 200)
    assert.equal(sent.requestHeaders['content-type'], 'application/json')
  } finally {
    await put.page.close()
  }

  const get = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenValid })
  try {
    assert.equal(get.result.state, 'ok', JSON.stringify(get.result))
    assert.equal(get.result.text, newName)
  } finally {
    await get.page.close()
  }
})

test('(e) valid token, no profile row: 404 profile_not_found, "No profile yet"', async (t) => {
  if (!env.tokenNoProfile) {
    t.skip('TOKEN_NO_PROFILE not set')
    return
  }
  const { page, result } = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenNoProfile })
  try {
    assert.equal(result.code, 'profile_not_found', JSON.stringify(result))
    assert.equal(result.status, '404')
    assert.match(result.text, /^No profile yet/)
  } finally {
    await page.close()
  }
})

test('(f) PUT with a name over 200 characters: 422 invalid_body, name unchanged', async (t) => {
  const first = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenValid })
  const current = first.result.text
  await first.page.close()

  const put = await runPage(t, env.allowedOrigin, { op: 'put', token: env.tokenValid, name: 'x'.repeat(201) })
  try {
    assert.equal(put.result.state, 'error')
    assert.equal(put.result.code, 'invalid_body', JSON.stringify(put.result))
    assert.equal(put.result.status, '422')
    assert.match(put.result.text, /^That name was not accepted/)
  } finally {
    await put.page.close()
  }

  const last = await runPage(t, env.allowedOrigin, { op: 'get', token: env.tokenValid })
  try {
    assert.equal(last.result.text, current)
  } finally {
    await last.page.close()
  }
})
