// The Next.js example's chat page (/chat) as a person uses it, in headless
// Chromium, against the real chat example (examples/chat, its built-in local
// model, SQLite) listening where the app was built to find it: a conversation
// that reads as one (turns told apart, the answer streaming in, Enter sends,
// Shift+Enter breaks the line, Send and Stop in one place, one-line titles with
// the open conversation marked), and the failures: the chat service down (the
// list says so, a message sent meanwhile stays in the box) and the quota (the
// question stays, the wait counts down with Send disabled). Every state is
// checked by axe-core and photographed (chromium.mjs captureState).
//
// Besides next-app.mjs's variables, scripts/browser-test passes:
//   NEXT_CHAT_URL    where the app's chat service is (NEXT_PUBLIC_CHAT_URL of the build)
//   CHAT_BIN         the built chat example (target/debug/examples/chat)
//   CHAT_JWT_SECRET  the HS256 secret of the service's tokens (the fake Auth hands out ones signed here)
import { after, before, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { createHmac, randomUUID } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { captureState, launchChromium } from './chromium.mjs'
import { app, freshPage, PASSWORD, signIn, skipNext, startNextApp } from './next-app.mjs'

const env = {
  chatUrl: process.env.NEXT_CHAT_URL ?? '',
  chatBin: process.env.CHAT_BIN ?? '',
  secret: process.env.CHAT_JWT_SECRET ?? '',
}
const skip = skipNext || (env.chatUrl ? false : 'NEXT_CHAT_URL not set (run through scripts/browser-test)')
// Requests a user may send per minute: the quota test reaches it in a few seconds, and the
// other tests, each its own user, stay under it.
const CHAT_RPM = 3
const work = mkdtempSync(join(tmpdir(), 'nextjs-chat-'))

const USERS = Object.fromEntries(
  ['talker', 'outage', 'quota'].map((name) => [name, { email: `${name}@example.com`, sub: randomUUID() }]),
)

let started
let chat

function token({ sub, email }) {
  const now = Math.floor(Date.now() / 1000)
  const encode = (v) => Buffer.from(JSON.stringify(v)).toString('base64url')
  const claims = { sub, aud: 'authenticated', role: 'authenticated', email, is_anonymous: false, iat: now, exp: now + 3600 }
  const input = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`
  return `${input}.${createHmac('sha256', Buffer.from(env.secret, 'utf8')).update(input).digest('base64url')}`
}

/** Starts the chat example on the app's chat address; resolves once it listens. */
function startChat() {
  const { hostname, port } = new URL(env.chatUrl)
  const child = spawn(env.chatBin, [], {
    cwd: work,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: {
      PATH: process.env.PATH,
      HOST: hostname,
      PORT: port,
      METRICS_ADDR: 'off',
      RUST_LOG: process.env.RUST_LOG ?? 'warn',
      DATABASE_URL: `sqlite://${join(work, 'chat.db')}`,
      SUPABASE_JWT_SECRET: env.secret,
      CORS_ALLOWED_ORIGINS: app.origin,
      CHAT_RPM: String(CHAT_RPM),
      CHAT_LOCAL_DELAY_MS: '150',
      SHUTDOWN_TIMEOUT_SECONDS: '1',
    },
  })
  const exited = new Promise((resolve) => child.once('exit', resolve))
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('chat: no "chat listening on" line within 60 s')), 60_000)
    let seen = ''
    child.stdout.on('data', (chunk) => {
      seen += chunk
      if (/chat listening on/.test(seen)) {
        clearTimeout(timer)
        resolve({
          stop: async () => {
            child.kill('SIGTERM')
            await exited
          },
        })
      }
    })
    child.once('exit', (code) => reject(new Error(`chat exited with ${code} while starting`)))
  })
}

before(async () => {
  if (skip) return
  const missing = ['CHAT_BIN', 'CHAT_JWT_SECRET'].filter((n) => !process.env[n])
  if (missing.length) throw new Error(`${missing.join(', ')} not set: run this test through scripts/browser-test`)
  chat = await startChat()
  started = await startNextApp(
    Object.values(USERS).map((u) => ({ email: u.email, password: PASSWORD, accessToken: token(u) })),
  )
})

after(async () => {
  await started?.close()
  await chat?.stop()
  rmSync(work, { recursive: true, force: true })
})

async function openChat(page, user) {
  await signIn(page, user.email)
  await page.waitForURL(`${app.origin}/`)
  await page.goto(`${app.origin}/chat`)
  await page.getByRole('heading', { level: 1, name: 'Chat' }).waitFor()
}

const turns = (page, author) => page.locator(`li.turn.${author}`)

/** Waits until the assistant's turn echoing `words` is complete, or an alert shows; true if answered. */
async function answeredOrAlert(page, words) {
  const handle = await page.waitForFunction(
    (w) => {
      if ([...document.querySelectorAll('li.assistant')].some((li) => li.textContent.includes(w))) return 'answered'
      return document.querySelector('[role="alert"]') ? 'alert' : false
    },
    words,
  )
  return (await handle.jsonValue()) === 'answered'
}

test('chat: a conversation a person recognises, streaming as it is written', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  await run(async () => {
    await openChat(page, USERS.talker)
    const list = page.getByRole('complementary', { name: 'Conversations' })
    await list.getByText('No conversations yet').waitFor()
    await captureState(page, 'chat-empty')

    // Shift+Enter breaks the line, Enter sends.
    const box = page.getByRole('textbox', { name: 'Message' })
    const send = page.getByRole('button', { name: 'Send' })
    const sendBox = await send.boundingBox()
    const firstLine = 'Tell me about the first line of a question that is long enough to need an ellipsis'
    await box.click()
    await page.keyboard.type(firstLine)
    await page.keyboard.press('Shift+Enter')
    await page.keyboard.type('and its second line')
    assert.equal(await box.inputValue(), `${firstLine}\nand its second line`, 'Shift+Enter did not add a line')
    await page.keyboard.press('Enter')

    const you = turns(page, 'user').first()
    await you.waitFor()
    assert.equal(await you.locator('.content').innerText(), `${firstLine}\nand its second line`)
    const answer = turns(page, 'assistant').first()
    await page.locator('li.turn.assistant[data-state="done"]').waitFor()
    assert.equal(await answer.locator('.content').innerText(), `${firstLine} and its second line`)
    assert.equal(await box.inputValue(), '', 'the sent message stayed in the box')

    // The two sides are told apart: a label each, another tint, another side.
    assert.match(await you.innerText(), /^You\b/)
    assert.match(await answer.innerText(), /^Assistant\b/)
    const look = (turn) =>
      turn.evaluate((li) => {
        const bubble = li.querySelector('.bubble')
        const r = bubble.getBoundingClientRect()
        const list = li.parentElement.getBoundingClientRect()
        return { background: getComputedStyle(bubble).backgroundColor, left: r.left - list.left, right: list.right - r.right }
      })
    const [mine, theirs] = [await look(you), await look(answer)]
    assert.notEqual(mine.background, theirs.background, 'both turns have the same background')
    assert.ok(mine.left - mine.right > 40, `your turn is not on the right: ${JSON.stringify(mine)}`)
    assert.ok(theirs.right - theirs.left > 40, `the answer is not on the left: ${JSON.stringify(theirs)}`)

    // The new conversation is listed on one line, marked as the open one.
    const item = list.getByRole('button', { name: firstLine.slice(0, 40) })
    await item.waitFor()
    assert.equal(await item.getAttribute('aria-current'), 'true')
    const title = await item.locator('.title').evaluate((el) => {
      const list = el.closest('ul')
      return {
        lines: el.getBoundingClientRect().height / parseFloat(getComputedStyle(el).lineHeight),
        ellipsis: getComputedStyle(el).textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth,
        listScrollsSideways: list.scrollWidth > list.clientWidth,
      }
    })
    assert.deepEqual(title, { lines: title.lines, ellipsis: true, listScrollsSideways: false })
    assert.ok(title.lines < 1.5, `the title takes ${title.lines.toFixed(1)} lines`)

    // While the answer streams: its first words are on screen, and Stop is where Send was.
    // 120 words, 150 ms apart: 18 s, far longer than the checks below take on a busy machine.
    const long = Array.from({ length: 120 }, (_, i) => `word${i + 1}`).join(' ')
    await box.fill(long)
    await box.press('Enter')
    const streaming = page.locator('li.turn.assistant[data-state="streaming"]')
    await streaming.getByText('word1', { exact: false }).waitFor()
    const stop = page.getByRole('button', { name: 'Stop' })
    const stopBox = await stop.boundingBox()
    const centre = (b) => [b.x + b.width / 2, b.y + b.height / 2]
    const [[sx, sy], [tx, ty]] = [centre(sendBox), centre(stopBox)]
    assert.ok(Math.hypot(sx - tx, sy - ty) < 4, `Stop is not where Send was: ${JSON.stringify({ sendBox, stopBox })}`)
    assert.equal(await send.count(), 0, 'Send and Stop are both shown')
    await captureState(page, 'chat-streaming')
    assert.equal(await streaming.count(), 1, 'the answer ended before the streaming state was checked')
    assert.ok(!(await streaming.innerText()).includes('word120'), 'the whole answer arrived at once')

    // Stop keeps what arrived, says it was stopped, and gives Send back.
    await stop.click()
    const stopped = page.locator('li.turn.assistant[data-state="stopped"]')
    await stopped.waitFor()
    assert.match(await stopped.innerText(), /word1 /)
    assert.match(await stopped.innerText(), /Stopped/)
    await send.waitFor()
    await captureState(page, 'chat-stopped')

    // A new conversation, then back to the first: it is marked again.
    await page.getByRole('button', { name: 'New conversation' }).click()
    assert.equal(await turns(page, 'user').count(), 0)
    assert.equal(await item.getAttribute('aria-current'), null)
    await item.click()
    await page.waitForFunction(() => document.querySelectorAll('li.turn.user').length === 2)
    assert.equal(await item.getAttribute('aria-current'), 'true')
    assert.equal(await turns(page, 'assistant').count(), 2)
    await captureState(page, 'chat-conversation')
  })
})

test('chat: with the chat service down the page says so, keeps the message, and recovers', { skip }, async (t) => {
  const { page, run } = await freshPage(t, started)
  await chat.stop()
  chat = null
  // The quota test after this one needs the chat service back, whatever happens here.
  t.after(async () => {
    chat ??= await startChat()
  })
  await run(async () => {
    await openChat(page, USERS.outage)
    // The list does not pass for an empty one.
    const list = page.getByRole('complementary', { name: 'Conversations' })
    const listAlert = list.getByRole('alert')
    await listAlert.waitFor()
    assert.match(await listAlert.textContent(), /couldn.t load/i)
    assert.equal(await list.getByText('No conversations yet').count(), 0)
    await captureState(page, 'chat-list-unavailable')

    const question = 'Are you there?'
    await page.locator('textarea').fill(question)
    await page.getByRole('button', { name: 'Send' }).click()
    const alert = page.locator('main [role="alert"]').filter({ hasText: /wasn.t sent/i })
    await alert.waitFor()
    assert.match(await alert.textContent(), /couldn.t reach/i)
    assert.equal(await page.locator('textarea').inputValue(), question, 'the message was thrown away')
    assert.equal(await page.locator('li.assistant').count(), 0, 'a failed answer left a turn behind')
    await captureState(page, 'chat-send-failed')

    // Back up: "Try again" sends it once.
    chat = await startChat()
    await alert.getByRole('button', { name: 'Try again' }).click()
    await page.locator('li.turn.assistant[data-state="done"]').waitFor()
    assert.equal(await turns(page, 'user').count(), 1)
    assert.equal(await turns(page, 'assistant').locator('.content').innerText(), 'Are you there?')
    await list.getByRole('button', { name: question }).waitFor()
    assert.equal(await listAlert.count(), 0)

    // Down in the middle of an answer: what arrived stays, marked as cut, and it says so.
    const long = Array.from({ length: 100 }, (_, i) => `part${i + 1}`).join(' ')
    await page.locator('textarea').fill(long)
    await page.getByRole('button', { name: 'Send' }).click()
    await page.locator('li.turn.assistant[data-state="streaming"]').getByText('part1').waitFor()
    await chat.stop()
    chat = null
    const cut = page.locator('li.turn.assistant[data-state="cut"]')
    await cut.waitFor()
    assert.match(await cut.innerText(), /part1 /)
    assert.match(await cut.innerText(), /cut off/)
    const unfinished = page.locator('main [role="alert"]').filter({ hasText: /didn.t finish/i })
    await unfinished.getByRole('button', { name: 'Try again' }).waitFor()
    assert.equal(await page.locator('textarea').inputValue(), '', 'the message the service took came back into the box')
    await captureState(page, 'chat-answer-cut')
    // The list read again after the failure failed too: the one already shown stays.
    assert.equal(await listAlert.count(), 0, 'the conversations on screen gave way to an error')
    await list.getByRole('button', { name: question }).waitFor()
  })
})

test('chat: over the quota the question stays, the wait counts down with Send disabled, then Send is back', {
  skip,
}, async (t) => {
  // Its own browser: the fake clock it installs stays with a browser context for good.
  const own = await launchChromium()
  t.after(() => own.close())
  await own.context.clock.install()
  const { page, run } = await freshPage(t, started, { context: own.context })
  await run(async () => {
    await openChat(page, USERS.quota)
    const box = page.locator('textarea')
    const send = page.getByRole('button', { name: 'Send' })
    // CHAT_RPM are admitted per clock minute: a few more cover a minute that turns meanwhile.
    let question
    let answered = 0
    for (let i = 1; ; i++) {
      assert.ok(i <= CHAT_RPM * 2, `no 429 after ${i - 1} messages`)
      question = `question number ${i}`
      await box.fill(question)
      await send.click()
      if (!(await answeredOrAlert(page, question))) break
      answered += 1
    }
    const alert = page.locator('main').getByRole('alert')
    assert.equal(await box.inputValue(), question, 'the question that was refused is gone')
    assert.equal(await page.locator('li.user').count(), answered, 'turns were lost')
    for (const text of await page.locator('li.assistant').allInnerTexts()) {
      assert.notEqual(text.replace(/^Assistant/, '').trim(), '', 'an empty answer was left behind')
    }
    const styled = await alert.evaluate((el) => {
      const s = getComputedStyle(el)
      return s.backgroundColor !== 'rgba(0, 0, 0, 0)' || parseFloat(s.borderLeftWidth) > 0
    })
    assert.ok(styled, 'the error has no error style')
    assert.ok(await send.isDisabled(), 'Send is enabled during the wait')

    const seconds = async () => Number(/(\d+)\s*s\b/.exec(await alert.innerText())?.[1])
    const first = await seconds()
    assert.ok(first > 0 && first <= 60, `no wait in seconds shown: ${await alert.innerText()}`)
    await own.context.clock.runFor(2000)
    const later = await seconds()
    assert.ok(later <= first - 1, `the wait does not count down: ${first} s, then ${later} s`)
    await captureState(page, 'chat-rate-limited')

    await own.context.clock.runFor((later + 1) * 1000)
    await page.waitForFunction(() => {
      const button = [...document.querySelectorAll('button')].find((b) => b.textContent.trim() === 'Send')
      return button && !button.disabled
    })
    assert.equal(await box.inputValue(), question)
    assert.equal(await page.locator('main').getByRole('alert').count(), 0, 'the wait is over, the alert stays')
  })
})
