//! Extractors for your handlers, each rejecting with the contract's JSON errors: the caller
//! ([`Claims`](crate::Claims), [`ValidUser`]), the caller's transaction ([`Tx`]), and the
//! request's body, path and query ([`Json`], [`Path`], [`Query`]).

mod body;
mod claims;
mod tx;

pub use body::{Json, Path, Query};
pub(crate) use body::{deadline_body, json_rejection};
pub use claims::ValidUser;
pub use tx::Tx;
pub(crate) use tx::settle_transaction;
