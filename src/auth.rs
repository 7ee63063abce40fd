//! Authentication: reading the bearer token, verifying it, and the `ValidUser` extractor.

pub mod bearer;
mod cache;
mod claims;
pub(crate) mod extractor;
pub mod jwks;
mod profile;
mod verify;

pub use claims::{Claims, UserId};
pub use extractor::ValidUser;
pub use profile::Profile;
pub use verify::{AuthError, Verifier};
