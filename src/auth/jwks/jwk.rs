//! From a JWK to a verifying key: which entries of a key set are usable, with which one
//! algorithm, their RFC 7638 thumbprints, and how the skipped ones are logged.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, ParsedPublicKey};
use base64::Engine;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::{KeySetError, TARGET, shorten};
use crate::auth::cache::Thumbprint;

/// The smallest RSA modulus accepted (RFC 7518 section 3.3 asks for 2048 bits or more).
const MIN_RSA_BITS: usize = 2048;
/// The largest RSA modulus the crypto backend verifies.
const MAX_RSA_BITS: usize = 8192;

/// base64url without padding, the canonical form for thumbprints (RFC 7638 section 3).
const B64URL_NO_PAD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false),
);

/// base64url as JWKs use it (RFC 7515 section 2: no padding); padding is tolerated.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One verifying key from the key set, with the one algorithm it may verify.
pub(crate) struct VerifyingKey {
    /// The only algorithm this key verifies, decided from its `kty`/`crv`/`alg`.
    pub alg: Algorithm,
    /// The key material.
    pub key: DecodingKey,
    /// The RFC 7638 JWK thumbprint (SHA-256) of the public key: what a verified token
    /// remembers, so that new material published under an old `kid` does not inherit trust.
    pub thumbprint: Thumbprint,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// `kid:alg` pairs, sorted: what the logs say was loaded (never key material).
pub(super) fn summarize(keys: &HashMap<String, Arc<VerifyingKey>>) -> String {
    let mut pairs: Vec<String> = keys
        .iter()
        .map(|(kid, key)| format!("{}:{:?}", shorten(kid), key.alg))
        .collect();
    pairs.sort();
    pairs.join(",")
}

pub(super) fn log_skipped(skipped: &[(String, Skip)], level: tracing::Level) {
    for (kid, reason) in skipped {
        let kid = shorten(kid);
        // Keys meant for something else are expected in a JWK set; the rest deserve a look.
        if level == tracing::Level::WARN && !reason.is_expected() {
            tracing::warn!(target: TARGET, kid, %reason, "key set entry skipped");
        } else {
            tracing::debug!(target: TARGET, kid, %reason, "key set entry skipped");
        }
    }
}

/// Why a JWK was left out of the usable keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Skip {
    #[error("not a JSON object with string members: {0}")]
    Shape(String),
    #[error("no kid: tokens name their key by kid")]
    NoKid,
    #[error("kid already used by an earlier key")]
    DuplicateKid,
    #[error("use is `{0}`, not `sig`")]
    NotForSignatures(String),
    #[error("key_ops does not include `verify`")]
    NotForVerifying,
    #[error("symmetric (oct) key: HS256 comes only from SUPABASE_JWT_SECRET")]
    Symmetric,
    #[error("unsupported key type `{0}`")]
    UnsupportedType(String),
    #[error("unsupported curve `{0}` for kty {1}")]
    UnsupportedCurve(String, &'static str),
    #[error("alg `{alg}` contradicts a {kty} key, which verifies {expected:?} only")]
    AlgMismatch {
        alg: String,
        kty: &'static str,
        expected: Algorithm,
    },
    #[error("RSA modulus of {0} bits (at least {MIN_RSA_BITS} and at most {MAX_RSA_BITS} needed)")]
    RsaSize(usize),
    #[error("bad key material: {0}")]
    Material(&'static str),
}

impl Skip {
    /// Entries a healthy key set may carry that simply are not for us.
    fn is_expected(&self) -> bool {
        matches!(
            self,
            Self::NotForSignatures(_) | Self::NotForVerifying | Self::Symmetric
        )
    }
}

/// The members of a JWK we read (RFC 7517 section 4, RFC 7518 section 6, RFC 8037).
#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    key_ops: Option<Vec<String>>,
    alg: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

/// A parsed key set: the usable keys by `kid`, and the entries left out with the reason.
pub(super) struct ParsedSet {
    pub(super) keys: HashMap<String, Arc<VerifyingKey>>,
    pub(super) skipped: Vec<(String, Skip)>,
}

/// Parses a JWK set document. Entries that are not usable verifying keys are skipped (and
/// reported) one by one; only a document that is not a JWK set at all is an error.
pub(super) fn parse_jwk_set(body: &[u8]) -> Result<ParsedSet, KeySetError> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| {
        KeySetError::Document(format!(
            "expected a JSON object with a `keys` array ({})",
            e.classify_name()
        ))
    })?;
    let mut keys = HashMap::new();
    let mut skipped = Vec::new();
    for (index, value) in set.keys.into_iter().enumerate() {
        let kid_for_log = value
            .get("kid")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("#{index}"), str::to_owned);
        let result = serde_json::from_value::<Jwk>(value)
            .map_err(|e| Skip::Shape(e.classify_name().to_owned()))
            .and_then(|jwk| {
                let kid = jwk.kid.clone().ok_or(Skip::NoKid)?;
                if keys.contains_key(&kid) {
                    return Err(Skip::DuplicateKid);
                }
                Ok((kid, verifying_key(&jwk)?))
            });
        match result {
            Ok((kid, key)) => {
                keys.insert(kid, Arc::new(key));
            }
            Err(reason) => skipped.push((kid_for_log, reason)),
        }
    }
    Ok(ParsedSet { keys, skipped })
}

/// A short, stable name for a serde_json error without echoing the input.
trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "io error",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// The one algorithm a JWK may verify, from its type and curve; a contradicting `alg` skips
/// the key rather than being trusted (or ignored), and a missing `alg` takes the type's.
fn algorithm_for(kty: &str, crv: Option<&str>, alg: Option<&str>) -> Result<Algorithm, Skip> {
    let (expected, kty, accepted_names): (Algorithm, &'static str, &[&str]) = match kty {
        "EC" => match crv {
            Some("P-256") => (Algorithm::ES256, "EC P-256", &["ES256"]),
            Some(other) => return Err(Skip::UnsupportedCurve(other.to_owned(), "EC")),
            None => return Err(Skip::Material("EC key without crv")),
        },
        "RSA" => (Algorithm::RS256, "RSA", &["RS256"]),
        // RFC 9864 names Ed25519 as a fully-specified algorithm beside the older `EdDSA`.
        "OKP" => match crv {
            Some("Ed25519") => (Algorithm::EdDSA, "OKP Ed25519", &["EdDSA", "Ed25519"]),
            Some(other) => return Err(Skip::UnsupportedCurve(other.to_owned(), "OKP")),
            None => return Err(Skip::Material("OKP key without crv")),
        },
        "oct" => return Err(Skip::Symmetric),
        other => return Err(Skip::UnsupportedType(other.to_owned())),
    };
    match alg {
        None => Ok(expected),
        Some(name) if accepted_names.contains(&name) => Ok(expected),
        Some(name) => Err(Skip::AlgMismatch {
            alg: name.to_owned(),
            kty,
            expected,
        }),
    }
}

fn decode_b64(value: Option<&String>, missing: &'static str) -> Result<Vec<u8>, Skip> {
    let value = value.ok_or(Skip::Material(missing))?;
    B64URL
        .decode(value)
        .map_err(|_| Skip::Material("member is not base64url"))
}

/// Builds the verifying key for `jwk`, checking what the crypto backend would not check until
/// a token arrives: the curve, coordinate lengths, that the point is on the curve, RSA size.
fn verifying_key(jwk: &Jwk) -> Result<VerifyingKey, Skip> {
    if let Some(use_) = jwk.use_.as_deref()
        && use_ != "sig"
    {
        return Err(Skip::NotForSignatures(use_.to_owned()));
    }
    if let Some(ops) = &jwk.key_ops
        && !ops.iter().any(|op| op == "verify")
    {
        return Err(Skip::NotForVerifying);
    }
    let kty = jwk.kty.as_deref().ok_or(Skip::Material("no kty"))?;
    let alg = algorithm_for(kty, jwk.crv.as_deref(), jwk.alg.as_deref())?;
    let (key, thumbprint) = match alg {
        Algorithm::ES256 => {
            let x = decode_b64(jwk.x.as_ref(), "EC key without x")?;
            let y = decode_b64(jwk.y.as_ref(), "EC key without y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err(Skip::Material("P-256 coordinates must be 32 bytes each"));
            }
            // SEC 1 uncompressed point: 0x04 || x || y, the form the verifier takes.
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                .map_err(|_| Skip::Material("point is not on P-256"))?;
            let thumbprint = jwk_thumbprint(&[
                ("crv", "P-256"),
                ("kty", "EC"),
                ("x", &B64URL_NO_PAD.encode(&x)),
                ("y", &B64URL_NO_PAD.encode(&y)),
            ]);
            (DecodingKey::from_ec_der(&point), thumbprint)
        }
        Algorithm::EdDSA => {
            let x = decode_b64(jwk.x.as_ref(), "OKP key without x")?;
            if x.len() != 32 {
                return Err(Skip::Material("Ed25519 public key must be 32 bytes"));
            }
            ParsedPublicKey::new(&ED25519, &x)
                .map_err(|_| Skip::Material("not an Ed25519 public key"))?;
            let thumbprint = jwk_thumbprint(&[
                ("crv", "Ed25519"),
                ("kty", "OKP"),
                ("x", &B64URL_NO_PAD.encode(&x)),
            ]);
            (DecodingKey::from_ed_der(&x), thumbprint)
        }
        Algorithm::RS256 => {
            let n = decode_b64(jwk.n.as_ref(), "RSA key without n")?;
            let e = decode_b64(jwk.e.as_ref(), "RSA key without e")?;
            let n = strip_leading_zeros(&n);
            let e = strip_leading_zeros(&e);
            let bits = bit_length(n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(Skip::RsaSize(bits));
            }
            // Public exponents are odd and small (65537 in practice); 1 would verify anything.
            if e.is_empty() || e.len() > 4 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
                return Err(Skip::Material(
                    "RSA exponent is not a usable public exponent",
                ));
            }
            let thumbprint = jwk_thumbprint(&[
                ("e", &B64URL_NO_PAD.encode(e)),
                ("kty", "RSA"),
                ("n", &B64URL_NO_PAD.encode(n)),
            ]);
            (DecodingKey::from_rsa_raw_components(n, e), thumbprint)
        }
        // algorithm_for returns only the three above.
        _ => return Err(Skip::Material("unsupported algorithm")),
    };
    Ok(VerifyingKey {
        alg,
        key,
        thumbprint,
    })
}

/// RFC 7638: SHA-256 of the JSON object of a key's required members, in lexicographic order,
/// without whitespace. `members` come sorted; their values are base64url or fixed names, which
/// need no JSON escaping.
fn jwk_thumbprint(members: &[(&str, &str)]) -> Thumbprint {
    let mut json = String::with_capacity(200);
    json.push('{');
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            json.push(',');
        }
        for part in ["\"", name, "\":\"", value, "\""] {
            json.push_str(part);
        }
    }
    json.push('}');
    let mut thumbprint = [0u8; 32];
    thumbprint.copy_from_slice(digest(&SHA256, json.as_bytes()).as_ref());
    thumbprint
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_length(big_endian: &[u8]) -> usize {
    match big_endian.first() {
        None => 0,
        Some(first) => (big_endian.len() - 1) * 8 + (8 - first.leading_zeros() as usize),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn ec_p256_maps_to_es256_with_or_without_alg() {
        assert_eq!(
            algorithm_for("EC", Some("P-256"), None),
            Ok(Algorithm::ES256)
        );
        assert_eq!(
            algorithm_for("EC", Some("P-256"), Some("ES256")),
            Ok(Algorithm::ES256)
        );
    }

    #[test]
    fn rsa_maps_to_rs256_with_or_without_alg() {
        assert_eq!(algorithm_for("RSA", None, None), Ok(Algorithm::RS256));
        assert_eq!(
            algorithm_for("RSA", None, Some("RS256")),
            Ok(Algorithm::RS256)
        );
    }

    #[test]
    fn okp_ed25519_maps_to_eddsa_with_either_name_or_none() {
        for alg in [None, Some("EdDSA"), Some("Ed25519")] {
            assert_eq!(
                algorithm_for("OKP", Some("Ed25519"), alg),
                Ok(Algorithm::EdDSA)
            );
        }
    }

    #[test]
    fn alg_contradicting_the_key_type_is_skipped() {
        for (kty, crv, alg) in [
            ("RSA", None, "ES256"),
            ("RSA", None, "HS256"),
            ("RSA", None, "PS256"),
            ("EC", Some("P-256"), "RS256"),
            ("EC", Some("P-256"), "ES384"),
            ("OKP", Some("Ed25519"), "ES256"),
        ] {
            assert!(
                matches!(
                    algorithm_for(kty, crv, Some(alg)),
                    Err(Skip::AlgMismatch { .. })
                ),
                "{kty} {crv:?} {alg}"
            );
        }
    }

    #[test]
    fn symmetric_keys_other_curves_and_types_are_skipped() {
        assert_eq!(
            algorithm_for("oct", None, Some("HS256")),
            Err(Skip::Symmetric)
        );
        assert!(matches!(
            algorithm_for("EC", Some("P-384"), Some("ES384")),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("EC", Some("secp256k1"), None),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("OKP", Some("Ed448"), Some("EdDSA")),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("OKP", Some("X25519"), None),
            Err(Skip::UnsupportedCurve(..))
        ));
        assert!(matches!(
            algorithm_for("AKP", None, None),
            Err(Skip::UnsupportedType(_))
        ));
    }

    // The P-256 generator point and RFC 8037's Ed25519 example key: real keys, made-up kids.
    pub(in crate::auth::jwks) const P256_X: &str = "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY";
    pub(in crate::auth::jwks) const P256_Y: &str = "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
    const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

    fn parse(json: serde_json::Value) -> ParsedSet {
        parse_jwk_set(json.to_string().as_bytes()).expect("a JWK set")
    }

    #[test]
    fn usable_keys_load_and_others_are_skipped_one_by_one() {
        let set = parse(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "ec", "use": "sig"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED25519_X, "kid": "ed", "alg": "EdDSA"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "enc", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_X, "kid": "off-curve"},
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "ec"},
            "not an object",
        ]}));
        let mut kids: Vec<_> = set.keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["ec", "ed"]);
        assert_eq!(set.keys["ec"].alg, Algorithm::ES256);
        assert_eq!(set.keys["ed"].alg, Algorithm::EdDSA);
        let reasons: Vec<_> = set.skipped.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(reasons.len(), 6);
        assert_eq!(reasons[0], Skip::NotForSignatures("enc".into()));
        assert_eq!(reasons[1], Skip::Symmetric);
        assert_eq!(reasons[2], Skip::NoKid);
        assert_eq!(reasons[3], Skip::Material("point is not on P-256"));
        assert_eq!(reasons[4], Skip::DuplicateKid);
        assert!(matches!(reasons[5], Skip::Shape(_)));
    }

    #[test]
    fn small_rsa_modulus_is_skipped() {
        let n_1024 = B64URL.encode([0xc5u8; 128]);
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": n_1024, "e": "AQAB", "kid": "weak"},
        ]}));
        assert!(set.keys.is_empty());
        assert_eq!(set.skipped[0].1, Skip::RsaSize(1024));
    }

    #[test]
    fn rsa_leading_zero_does_not_count_towards_size() {
        let mut n = vec![0u8];
        n.extend_from_slice(&[0xc5u8; 256]);
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": B64URL.encode(&n), "e": "AQAB", "kid": "ok"},
            {"kty": "RSA", "n": B64URL.encode(&n), "e": "AQ", "kid": "e-is-one"},
        ]}));
        assert_eq!(set.keys["ok"].alg, Algorithm::RS256);
        assert!(!set.keys.contains_key("e-is-one"));
    }

    #[test]
    fn a_document_without_keys_is_an_error_and_an_empty_set_is_not() {
        assert!(parse_jwk_set(b"{}").is_err());
        assert!(parse_jwk_set(b"<html>").is_err());
        assert!(parse_jwk_set(br#"{"keys": []}"#).is_ok_and(|s| s.keys.is_empty()));
    }

    #[test]
    fn thumbprint_is_rfc_7638s_example() {
        // RFC 7638 section 3.1: this RSA key's thumbprint.
        let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
        let set = parse(serde_json::json!({"keys": [
            {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"},
        ]}));
        let expected = B64URL
            .decode("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs")
            .expect("base64url");
        assert_eq!(
            set.keys["2011-04-29"].thumbprint.as_slice(),
            expected.as_slice()
        );
    }

    #[test]
    fn thumbprints_follow_the_material_not_the_kid_or_padding() {
        let set = parse(serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y, "kid": "a"},
            {"kty": "EC", "crv": "P-256", "x": format!("{P256_X}="), "y": P256_Y, "kid": "b"},
            {"kty": "OKP", "crv": "Ed25519", "x": ED25519_X, "kid": "c"},
        ]}));
        assert_eq!(set.keys["a"].thumbprint, set.keys["b"].thumbprint);
        assert_ne!(set.keys["a"].thumbprint, set.keys["c"].thumbprint);
    }
}
