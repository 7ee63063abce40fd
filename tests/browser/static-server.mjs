// A tiny static server for page/, plus /service.js: the Next.js example's
// lib/service.ts turned into plain JavaScript with the TypeScript compiler, so
// the browser runs the very helper the example ships.
import { createServer } from 'node:http'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import ts from 'typescript'

const here = (p) => fileURLToPath(new URL(p, import.meta.url))

export const SERVICE_TS = here('../../examples/nextjs/lib/service.ts')

/** lib/service.ts as an ES module for the browser; throws on a syntax error. */
export function transpileServiceHelper() {
  const source = readFileSync(SERVICE_TS, 'utf8')
  const { outputText, diagnostics } = ts.transpileModule(source, {
    fileName: 'service.ts',
    reportDiagnostics: true,
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
  })
  if (diagnostics && diagnostics.length > 0) {
    const text = diagnostics.map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n')).join('\n')
    throw new Error(`cannot transpile ${SERVICE_TS}:\n${text}`)
  }
  return outputText
}

function files() {
  return new Map([
    ['/', { type: 'text/html; charset=utf-8', body: readFileSync(here('./page/index.html')) }],
    ['/index.html', { type: 'text/html; charset=utf-8', body: readFileSync(here('./page/index.html')) }],
    ['/app.js', { type: 'text/javascript; charset=utf-8', body: readFileSync(here('./page/app.js')) }],
    ['/service.js', { type: 'text/javascript; charset=utf-8', body: transpileServiceHelper() }],
  ])
}

/**
 * Serves the page on every address given ({host, port}); resolves once all
 * listen. An address that cannot be bound fails the start, except when marked
 * optional (used for [::1] on machines without IPv6).
 */
export async function startStaticServer(addresses) {
  const table = files()
  const servers = []
  for (const { host, port, optional } of addresses) {
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://x').pathname
      if (path === '/favicon.ico') {
        // Keeps a 404 for the icon out of the console messages the test reads.
        res.writeHead(204).end()
        return
      }
      const file = req.method === 'GET' || req.method === 'HEAD' ? table.get(path) : undefined
      if (!file) {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n')
        return
      }
      res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' })
      res.end(req.method === 'HEAD' ? undefined : file.body)
    })
    try {
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(port, host, () => {
          server.off('error', reject)
          resolve()
        })
      })
      servers.push(server)
    } catch (err) {
      if (optional) continue
      await Promise.all(servers.map((s) => new Promise((r) => s.close(r))))
      throw new Error(`static server cannot listen on ${host}:${port}: ${err.message}`)
    }
  }
  return {
    close: () =>
      Promise.all(
        servers.map(
          (s) =>
            new Promise((resolve) => {
              s.closeAllConnections?.()
              s.close(() => resolve())
            }),
        ),
      ),
  }
}
