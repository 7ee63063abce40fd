// Headless Chromium from the Debian package, driven by playwright-core (which
// never downloads a browser of its own here), in a fresh throwaway profile.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { AxeBuilder } from '@axe-core/playwright'

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

/** Where captureState() writes: STATES_DIR (scripts/browser-test sets it), else artifacts/states/. */
export const STATES_DIR = process.env.STATES_DIR || fileURLToPath(new URL('./states/', ARTIFACTS))

/** The sizes every state is looked at in: a laptop, and a phone held upright (iPhone 12 to 15). */
export const VIEWPORTS = [
  ['desktop', { width: 1280, height: 800 }],
  ['mobile', { width: 390, height: 844 }],
]

const BLOCKING_IMPACTS = new Set(['serious', 'critical'])

/**
 * One state of a page, checked and recorded as a person would meet it: in light and dark
 * mode, at desktop and mobile size, axe-core (WCAG 2.x A and AA rules, best practices)
 * must find no serious or critical violation, and a full-page PNG of each combination
 * goes to STATES_DIR as `<name>-<desktop|mobile>-<light|dark>.png`; nor may the page be
 * wider than the window. The page is left at desktop size in light mode. Throws with every
 * violation's rule, help text and elements.
 */
export async function captureState(page, name) {
  mkdirSync(STATES_DIR, { recursive: true })
  const problems = []
  try {
    for (const scheme of ['light', 'dark']) {
      await page.emulateMedia({ colorScheme: scheme })
      for (const [label, size] of VIEWPORTS) {
        await page.setViewportSize(size)
        // A layout that does not hold makes the page scroll sideways.
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
        if (overflow > 0) problems.push(`${label} ${scheme}: the page is ${overflow} px wider than the window`)
        // Legacy mode runs axe in the page itself; the default opens a blank page per run to
        // merge the results of cross-origin frames, which these pages do not have, and is
        // two to three times slower on a busy 2-core machine.
        const results = await new AxeBuilder({ page }).setLegacyMode(true).analyze()
        for (const v of results.violations) {
          if (!BLOCKING_IMPACTS.has(v.impact)) continue
          const where = v.nodes.map((n) => `${n.target.join(' ')}${n.failureSummary ? ` (${n.failureSummary.replace(/\s+/g, ' ')})` : ''}`)
          problems.push(`${label} ${scheme}: ${v.impact} ${v.id}: ${v.help}\n      ${where.join('\n      ')}`)
        }
        const file = join(STATES_DIR, `${name}-${label}-${scheme}.png`)
        await page.screenshot({ path: file, fullPage: true, animations: 'disabled', caret: 'hide' })
      }
    }
  } finally {
    await page.setViewportSize(VIEWPORTS[0][1])
    await page.emulateMedia({ colorScheme: 'light' })
  }
  if (problems.length > 0) {
    throw new Error(`${problems.length} problem(s) (axe-core: serious or critical only) in state "${name}":\n  ${problems.join('\n  ')}`)
  }
}
