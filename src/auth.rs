//! Authentication: reading the bearer token and verifying it against the project's keys. No
//! database and no HTTP answers here: the extractors (`crate::extract`) and the error table
//! (`crate::ApiError`) build on it.

pub(crate) mod bearer;
mod cache;
mod claims;
mod jwks;
mod verify;

pub use claims::{Claims, UserId};
pub use jwks::{KeySet, KeySetError};
pub use verify::{AuthError, Verifier};
