//! Authentication: reading the bearer token, verifying it, and the `ValidUser` extractor.

pub mod bearer;
pub mod cache;
pub mod claims;
pub mod extractor;
pub mod jwks;
pub mod profile;
pub mod verify;

pub use claims::{Claims, UserId};
pub use extractor::ValidUser;
pub use profile::Profile;
pub use verify::{AuthError, Verifier};
