import type { ReactNode } from 'react'

/**
 * A message for the person using the page: a sentence in their words (`title`, then
 * optionally `children`), the technical detail in small print after it (`detail`, marked
 * `data-detail`, for whoever debugs it), and what they can do next (`actions`). Errors are
 * announced at once (`role="alert"`); other news politely (`role="status"`).
 */
export default function Notice({
  tone = 'error',
  title,
  children,
  detail,
  actions,
  code,
}: {
  tone?: 'error' | 'info'
  title: string
  children?: ReactNode
  detail?: string | null
  actions?: ReactNode
  /** The machine-readable cause (an `error` code), for tests and debugging. */
  code?: string
}) {
  return (
    <div className={`notice ${tone}`} role={tone === 'error' ? 'alert' : 'status'} data-error-code={code}>
      <p className="title">{title}</p>
      {children}
      {detail ? (
        <p className="detail" data-detail="">
          {detail}
        </p>
      ) : null}
      {actions ? <div className="actions">{actions}</div> : null}
    </div>
  )
}
