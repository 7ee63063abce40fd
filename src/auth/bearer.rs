//! Reads the bearer token from the `Authorization` header, per RFC 6750 section 2.1.

use axum::http::{HeaderMap, header::AUTHORIZATION};

use super::AuthError;

/// Longest token accepted. A plain Supabase access token is under 2 KiB, but users set their
/// own `user_metadata` (`supabase.auth.updateUser({ data })`) and every token carries it, so
/// a user with 6 KiB of metadata holds a token of about 8.5 KiB. 12 KiB admits that with room
/// to spare inside the 16 KiB request-head limit; the bound keeps hostile input from costing
/// decode time.
pub(crate) const MAX_TOKEN_LEN: usize = 12 * 1024;

/// Returns the bearer token of the request's one `Authorization` header.
///
/// None, or another scheme: [`AuthError::Missing`]. Two or more headers:
/// [`AuthError::DuplicateHeader`]. A Bearer header whose credentials are empty, too long or not
/// token68 characters: [`AuthError::Malformed`].
pub(crate) fn token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::DuplicateHeader);
    }
    let Ok(value) = value.to_str() else {
        return Err(AuthError::Malformed);
    };
    let value = value.trim();
    let (scheme, rest) = match value.split_once(' ') {
        Some((scheme, rest)) => (scheme, rest),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.bytes().all(is_token68) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// RFC 7235 token68 characters (base64url, base64 and the `=` padding); a JWT is a subset.
fn is_token68(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn no_header_is_missing() {
        assert_eq!(token(&HeaderMap::new()), Err(AuthError::Missing));
    }

    #[test]
    fn other_scheme_is_missing() {
        assert_eq!(
            token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(AuthError::Missing)
        );
        assert_eq!(token(&headers(&["Bearertoken"])), Err(AuthError::Missing));
    }

    #[test]
    fn scheme_is_case_insensitive() {
        assert_eq!(token(&headers(&["bEaReR a.b.c"])), Ok("a.b.c"));
        assert_eq!(token(&headers(&["BEARER   a.b.c  "])), Ok("a.b.c"));
    }

    #[test]
    fn two_headers_are_an_invalid_request() {
        assert_eq!(
            token(&headers(&["Bearer a.b.c", "Bearer a.b.c"])),
            Err(AuthError::DuplicateHeader)
        );
    }

    #[test]
    fn empty_or_odd_credentials_are_malformed() {
        assert_eq!(token(&headers(&["Bearer"])), Err(AuthError::Malformed));
        assert_eq!(token(&headers(&["Bearer   "])), Err(AuthError::Malformed));
        assert_eq!(token(&headers(&["Bearer a b"])), Err(AuthError::Malformed));
        assert_eq!(token(&headers(&["Bearer a\"b"])), Err(AuthError::Malformed));
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 1));
        assert_eq!(token(&headers(&[&long])), Err(AuthError::Malformed));
    }

    #[test]
    fn non_ascii_header_is_malformed() {
        let mut h = HeaderMap::new();
        h.insert(
            AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        );
        assert_eq!(token(&h), Err(AuthError::Malformed));
    }
}
