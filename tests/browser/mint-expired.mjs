// Fallback for scripts/browser-test, used only if `supabase-jwt-service mint`
// refuses a negative --ttl: prints an HS256 token shaped like a Supabase access
// token that expired an hour ago. Inputs: JWT_SECRET, SUB, optional EMAIL.
import { createHmac } from 'node:crypto'

const secret = process.env.JWT_SECRET
const sub = process.env.SUB
if (!secret || !sub) {
  console.error('mint-expired: set JWT_SECRET and SUB')
  process.exit(2)
}

const now = Math.floor(Date.now() / 1000)
const header = { alg: 'HS256', typ: 'JWT' }
const claims = {
  sub,
  aud: 'authenticated',
  role: 'authenticated',
  email: process.env.EMAIL ?? 'ada@example.com',
  iat: now - 7200,
  exp: now - 3600,
}
const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url')
const signingInput = `${encode(header)}.${encode(claims)}`
const signature = createHmac('sha256', Buffer.from(secret, 'utf8')).update(signingInput).digest('base64url')
process.stdout.write(`${signingInput}.${signature}\n`)
