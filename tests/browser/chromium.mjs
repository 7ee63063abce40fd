// Headless Chromium from the Debian package, driven by playwright-core (which
// never downloads a browser of its own here), in a fresh throwaway profile.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

/**
 * Resolves to { context, close }. Playwright takes a user-data-dir only through
 * launchPersistentContext, so the "browser" is that one persistent context.
 */
export async function launchChromium(executablePath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium') {
  const userDataDir = mkdtempSync(join(tmpdir(), 'browser-e2e-profile-'))
  let context
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: CHROMIUM_ARGS,
    })
  } catch (err) {
    rmSync(userDataDir, { recursive: true, force: true })
    throw err
  }
  return {
    context,
    close: async () => {
      await context.close()
      rmSync(userDataDir, { recursive: true, force: true })
    },
  }
}

const ARTIFACTS = new URL('./artifacts/', import.meta.url)

/**
 * Best effort: a PNG of the page in tests/browser/artifacts/, named after the
 * test. Taken on failure, and at the key steps when SCREENSHOTS=1.
 */
export async function saveScreenshot(page, name) {
  try {
    const dir = fileURLToPath(ARTIFACTS)
    mkdirSync(dir, { recursive: true })
    const file = join(dir, `${name.replace(/[^a-z0-9]+/gi, '-').slice(0, 60)}.png`)
    await page.screenshot({ path: file })
    console.error(`screenshot: ${file}`)
  } catch {
    // the page may already be gone; the assertion message says enough
  }
}

/** A screenshot of a state worth looking at, only when SCREENSHOTS=1. */
export async function snapshot(page, name) {
  if (process.env.SCREENSHOTS === '1') await saveScreenshot(page, name)
}
