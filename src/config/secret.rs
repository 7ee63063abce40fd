//! [`Secret`]: a string that never prints, and the check for the local stack's published one.

use std::fmt;

use super::LOCAL_STACK_JWT_SECRET;

/// A secret string whose `Debug` and `Display` never show its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether this is the Supabase CLI local stack's published secret, which anyone can
    /// sign tokens with. Compared in constant time like any other secret.
    ///
    /// ```
    /// use supabase_jwt_service::config::{LOCAL_STACK_JWT_SECRET, Secret};
    /// assert!(Secret::new(LOCAL_STACK_JWT_SECRET).is_published_local_secret());
    /// assert!(!Secret::new("the-project-secret-from-the-dashboard-0123").is_published_local_secret());
    /// ```
    pub fn is_published_local_secret(&self) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            self.0.as_bytes(),
            LOCAL_STACK_JWT_SECRET.as_bytes(),
        )
        .is_ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("very-secret-value");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    }

    #[test]
    fn published_local_secret_is_recognised() {
        assert!(Secret::new(LOCAL_STACK_JWT_SECRET).is_published_local_secret());
        assert!(!Secret::new("x".repeat(40)).is_published_local_secret());
        assert!(!Secret::new(&LOCAL_STACK_JWT_SECRET[1..]).is_published_local_secret());
    }
}
