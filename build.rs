//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds the migration files at
//! compile time, and on stable Rust it cannot tell cargo to watch their folder itself.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
