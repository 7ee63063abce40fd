//! The command line: `serve` (default), `migrate`, `mint`.

use clap::{Parser, Subcommand};

use crate::auth::UserId;
use crate::config::RawConfig;

/// Verifies Supabase access tokens and serves the caller's profile.
///
/// Every setting is read from the environment (and a `.env` file); flags override it.
#[derive(Debug, Parser)]
#[command(name = "supabase-jwt-service", version, about, long_about = None)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings, from flags or the environment.
    #[command(flatten)]
    pub config: RawConfig,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (migrates the embedded store; Postgres only with --migrate).
    Serve {
        /// Apply migrations to DATABASE_URL before serving.
        #[arg(long)]
        migrate: bool,
    },
    /// Apply migrations to DIRECT_DATABASE_URL (or DATABASE_URL) and exit.
    Migrate,
    /// Print an HS256 token shaped like a Supabase access token, signed with SUPABASE_JWT_SECRET.
    Mint {
        /// The user id (`sub`), a UUID.
        #[arg(long, value_parser = parse_user_id)]
        sub: UserId,
        /// The `email` claim.
        #[arg(long)]
        email: Option<String>,
        /// The `role` claim.
        #[arg(long, default_value = "authenticated")]
        role: String,
        /// Lifetime, e.g. 1h, 30m, 90s; negative (--ttl=-1h) mints an expired token.
        #[arg(long, default_value = "1h", allow_hyphen_values = true, value_parser = crate::mint::parse_ttl)]
        ttl: i64,
    },
}

fn parse_user_id(s: &str) -> Result<UserId, String> {
    UserId::parse(s)
        .ok_or_else(|| "must be a UUID such as 5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f".to_owned())
}
