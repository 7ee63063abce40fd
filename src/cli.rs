//! The command line: `serve` (default), `migrate`, `mint`, and every setting as a flag, made
//! from the library's one list of variables (`config::VARIABLES`), so a flag, its variable and
//! its `--help` line cannot drift apart.

use clap::{Arg, ArgAction, ArgMatches, Command};
use supabase_jwt_service::config::VARIABLES;
use supabase_jwt_service::{Config, ConfigError, UserId};

/// What to do.
pub(crate) enum Action {
    /// Serve HTTP, migrating Postgres first when asked.
    Serve { migrate: bool },
    /// Apply the migrations and exit.
    Migrate,
    /// Print a token.
    Mint {
        sub: UserId,
        email: Option<String>,
        role: String,
        /// Seconds; negative for an expired token.
        ttl: i64,
    },
}

/// The command line and environment, parsed: clap exits by itself for `--help`, `--version`
/// and a malformed command line.
pub(crate) fn parse() -> (Action, Result<Config, ConfigError>) {
    let matches = command().get_matches();
    let (action, sub) = match matches.subcommand() {
        Some(("migrate", sub)) => (Action::Migrate, Some(sub)),
        Some(("mint", sub)) => (
            Action::Mint {
                sub: sub
                    .get_one::<UserId>("sub")
                    .copied()
                    .unwrap_or_else(|| UserId::from(uuid::Uuid::nil())),
                email: sub.get_one::<String>("email").cloned(),
                role: sub
                    .get_one::<String>("role")
                    .cloned()
                    .unwrap_or_else(|| "authenticated".to_owned()),
                ttl: sub.get_one::<i64>("ttl").copied().unwrap_or(3600),
            },
            Some(sub),
        ),
        Some(("serve", sub)) => (
            Action::Serve {
                migrate: sub.get_flag("migrate"),
            },
            Some(sub),
        ),
        _ => (Action::Serve { migrate: false }, None),
    };
    let config = Config::from_lookup(|name| setting(sub, &matches, name));
    (action, config)
}

/// A setting from the subcommand's flags, then the top level's (a global flag may come before
/// or after the subcommand), then (clap's `env`) the environment.
fn setting(sub: Option<&ArgMatches>, top: &ArgMatches, name: &str) -> Option<String> {
    sub.and_then(|m| m.get_one::<String>(name))
        .or_else(|| top.get_one::<String>(name))
        .cloned()
}

fn command() -> Command {
    let mut command = Command::new("supabase-jwt-service")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Verifies Supabase access tokens and serves the caller's profile.")
        .after_help(
            "Every setting is read from the environment (and a .env file); flags override it.",
        )
        .subcommand(
            Command::new("serve")
                .about("Serve HTTP (migrates the embedded store; Postgres only with --migrate)")
                .arg(
                    Arg::new("migrate")
                        .long("migrate")
                        .action(ArgAction::SetTrue)
                        .help("Apply migrations to DIRECT_DATABASE_URL (or DATABASE_URL) before serving"),
                ),
        )
        .subcommand(
            Command::new("migrate")
                .about("Apply migrations to DIRECT_DATABASE_URL (or DATABASE_URL) and exit"),
        )
        .subcommand(
            Command::new("mint")
                .about("Print an HS256 token shaped like a Supabase access token, signed with SUPABASE_JWT_SECRET")
                .arg(
                    Arg::new("sub")
                        .long("sub")
                        .required(true)
                        .value_parser(parse_user_id)
                        .help("The user id (`sub`), a UUID"),
                )
                .arg(Arg::new("email").long("email").help("The `email` claim"))
                .arg(
                    Arg::new("role")
                        .long("role")
                        .default_value("authenticated")
                        .help("The `role` claim"),
                )
                .arg(
                    Arg::new("ttl")
                        .long("ttl")
                        .default_value("1h")
                        .allow_hyphen_values(true)
                        .value_parser(parse_ttl)
                        .help("Lifetime, e.g. 1h, 30m, 90s; negative (--ttl=-1h) mints an expired token"),
                ),
        );
    for var in VARIABLES {
        command = command.arg(
            Arg::new(var.name)
                .long(var.flag)
                .env(var.name)
                .global(true)
                .hide_env_values(true)
                .value_name("VALUE")
                .help(var.help),
        );
    }
    command
}

fn parse_user_id(s: &str) -> Result<UserId, String> {
    UserId::parse(s)
        .ok_or_else(|| "must be a UUID such as 5f1c2b8e-1d2a-4c3b-9e4f-0a1b2c3d4e5f".to_owned())
}

/// Parses a lifetime such as `1h`, `30m`, `90s`, `2d`, `3600` or `-1h`, into seconds.
pub(crate) fn parse_ttl(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let (negative, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (digits, unit) = match body.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => body.split_at(i),
        None => (body, "s"),
    };
    let n: i64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration such as 1h, 30m or 90s"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{s}` has an unknown unit (use s, m, h or d)")),
    };
    let secs = n
        .checked_mul(scale)
        .filter(|v| *v <= 366 * 86_400)
        .ok_or("ttl is longer than a year")?;
    Ok(if negative { -secs } else { secs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_units() {
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("30m"), Ok(1800));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("-1h"), Ok(-3600));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999d").is_err());
    }

    #[test]
    fn every_setting_is_a_flag_and_reads_its_variable() {
        command().debug_assert();
        let command = command();
        let mut from_clap: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect();
        let mut listed: Vec<String> = VARIABLES.iter().map(|v| v.name.to_owned()).collect();
        from_clap.sort();
        listed.sort();
        assert_eq!(from_clap, listed);
    }
}
