import type { NextConfig } from 'next'

const nextConfig: NextConfig = {
  reactStrictMode: true,
  poweredByHeader: false,
  // This folder is self-contained (its own package-lock.json); without this,
  // Next would go looking for a workspace root higher up in the repository.
  turbopack: { root: __dirname },
}

export default nextConfig
