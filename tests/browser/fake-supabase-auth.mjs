// A stand-in for Supabase Auth (GoTrue), just enough for the Next.js example
// to sign in with email + password: no Docker, no network. It hands out access
// tokens that scripts/browser-test minted with the service's own `mint`, so the
// real service verifies them exactly as it would verify Supabase's.
//
// Endpoints (under /auth/v1, as @supabase/supabase-js calls them):
//   POST /token?grant_type=password       {email, password} -> session
//   POST /token?grant_type=refresh_token  {refresh_token}   -> session
//   GET  /user                            Bearer token      -> user
//   POST /logout                                            -> 204
import { createServer } from 'node:http'

/** The payload of a JWT, unverified (this fake trusts its own tokens). */
function jwtPayload(token) {
  return JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString('utf8'))
}

/**
 * users: [{ email, password, accessToken }]; each user's id is its token's sub.
 * Resolves to { url, close() } once listening on host:port.
 */
export async function startFakeSupabaseAuth({ host, port, users }) {
  const accounts = users.map((u) => {
    const claims = jwtPayload(u.accessToken)
    const user = {
      id: claims.sub,
      aud: 'authenticated',
      role: 'authenticated',
      email: u.email,
      email_confirmed_at: '2024-01-01T00:00:00Z',
      phone: '',
      app_metadata: { provider: 'email', providers: ['email'] },
      user_metadata: {},
      identities: [],
      created_at: '2024-01-01T00:00:00Z',
      updated_at: '2024-01-01T00:00:00Z',
      is_anonymous: false,
    }
    return { ...u, exp: claims.exp, refreshToken: `refresh-${claims.sub}`, user }
  })

  const session = (account) => ({
    access_token: account.accessToken,
    token_type: 'bearer',
    expires_in: Math.max(0, account.exp - Math.floor(Date.now() / 1000)),
    expires_at: account.exp,
    refresh_token: account.refreshToken,
    user: account.user,
  })

  const calls = []
  const server = createServer(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://fake')
    calls.push(`${req.method} ${url.pathname}${url.search}`)
    const headers = {
      'content-type': 'application/json',
      // Browser-side supabase-js may call us from the app's origin.
      'access-control-allow-origin': req.headers.origin ?? '*',
      'access-control-allow-headers': req.headers['access-control-request-headers'] ?? '*',
      'access-control-allow-methods': 'GET, POST, PUT, DELETE, OPTIONS',
    }
    const send = (status, body) => {
      res.writeHead(status, headers)
      res.end(body === undefined ? undefined : JSON.stringify(body))
    }
    if (req.method === 'OPTIONS') return send(204)

    let body = {}
    if (req.method === 'POST') {
      const chunks = []
      for await (const chunk of req) chunks.push(chunk)
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
      } catch {
        return send(400, { code: 400, error_code: 'bad_json', msg: 'body is not JSON' })
      }
    }

    const route = `${req.method} ${url.pathname}`
    if (route === 'POST /auth/v1/token') {
      const grant = url.searchParams.get('grant_type')
      let account
      if (grant === 'password') {
        account = accounts.find((a) => a.email === body.email && a.password === body.password)
        if (!account) {
          return send(400, { code: 400, error_code: 'invalid_credentials', msg: 'Invalid login credentials' })
        }
      } else if (grant === 'refresh_token') {
        account = accounts.find((a) => a.refreshToken === body.refresh_token)
        if (!account) {
          return send(400, { code: 400, error_code: 'refresh_token_not_found', msg: 'Invalid Refresh Token' })
        }
      } else {
        return send(400, { code: 400, error_code: 'validation_failed', msg: `unsupported grant_type ${grant}` })
      }
      return send(200, session(account))
    }
    if (route === 'GET /auth/v1/user') {
      const token = (req.headers.authorization ?? '').replace(/^Bearer\s+/i, '')
      const account = accounts.find((a) => a.accessToken === token)
      if (!account) return send(403, { code: 403, error_code: 'bad_jwt', msg: 'invalid JWT' })
      return send(200, account.user)
    }
    if (route === 'POST /auth/v1/logout') return send(204)
    return send(404, { code: 404, error_code: 'not_found', msg: `${route} is not faked` })
  })

  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, resolve)
  })
  return {
    url: `http://${host}:${server.address().port}`,
    calls,
    close: () =>
      new Promise((resolve) => {
        server.closeAllConnections?.()
        server.close(() => resolve())
      }),
  }
}
