//! JWT bearer tokens, checked against a JWKS document: who a caller is when an identity
//! provider (OAuth 2.0 client credentials) issued its token, beside the policy's API keys.
//!
//! Only asymmetric signatures are taken: RS256, ES256 (P-256) and EdDSA (Ed25519). A token
//! whose header names `none` or an HMAC algorithm is refused before any key is looked at, and
//! a symmetric (`oct`) key in the JWKS is never used, so a public key can never be turned into
//! an HMAC secret. `exp`, `iss` and `aud` are required and checked with 60 s of clock skew
//! (`nbf` too when present). The tenant comes from one claim (`tenant` unless configured);
//! scopes from `scope` (space-separated, RFC 8693) or `scp` (a list or a string).

use std::collections::HashSet;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 60;

/// The algorithms a token may be signed with.
pub const ACCEPTED: &[Algorithm] = &[Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];

/// What a token must say, besides a good signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectations {
    /// `iss`, exactly.
    pub issuer: String,
    /// One of the token's `aud`.
    pub audience: String,
    /// The claim naming the tenant.
    pub tenant_claim: String,
}

/// What a caller may do with a token; an API key may do all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Predict,
    Explain,
    Feedback,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Explain => "explain",
            Self::Feedback => "feedback",
        }
    }
}

/// Who a valid token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    pub tenant: String,
    /// `sub`, when the token has one (for logs).
    pub subject: Option<String>,
    pub scopes: HashSet<String>,
}

impl TokenIdentity {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope.as_str())
    }
}

/// Why a JWKS document was not taken.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document ({0}): it must be a JSON object with a \"keys\" array")]
    Shape(String),
    #[error(
        "no usable key: the bridge takes RSA (RS256), EC P-256 (ES256) and OKP Ed25519 (EdDSA) signing keys; \
         skipped: {0}"
    )]
    NoUsableKey(String),
}

/// Why a token was refused (401 `invalid_token`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a JWT with a readable header (alg \"none\" is never accepted)")]
    Malformed,
    #[error("the token is signed with {0}; only RS256, ES256 and EdDSA are accepted")]
    Algorithm(String),
    #[error("no key in the JWKS has kid {0:?} for this algorithm")]
    UnknownKey(String),
    #[error("no key in the JWKS verifies the token's signature")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's issuer is not the one this bridge trusts")]
    Issuer,
    #[error("the token's audience does not name this bridge")]
    Audience,
    #[error("the token lacks the {0} claim")]
    MissingClaim(String),
    #[error("the token's {0} claim is not a tenant name (a non-empty string)")]
    Tenant(String),
    #[error("the token's claims are invalid: {0}")]
    Invalid(String),
}

struct Key {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// The signing keys of one JWKS document.
pub struct Jwks {
    keys: Vec<Key>,
    /// Keys skipped, each with why (logged and reported at load).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<Option<&str>> = self.keys.iter().map(|k| k.kid.as_deref()).collect();
        f.debug_struct("Jwks").field("kids", &kids).field("skipped", &self.skipped).finish()
    }
}

impl Jwks {
    /// The usable keys of a JWKS document; a key that cannot be used (symmetric, another
    /// curve, for encryption, another algorithm) is skipped and named in [`Jwks::skipped`].
    pub fn parse(bytes: &[u8]) -> Result<Self, JwksError> {
        let document: Value = serde_json::from_slice(bytes).map_err(|e| JwksError::Shape(e.to_string()))?;
        let entries =
            document.get("keys").and_then(Value::as_array).ok_or_else(|| JwksError::Shape("no keys array".into()))?;
        let (mut keys, mut skipped) = (Vec::new(), Vec::new());
        for (i, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(Value::as_str).map(str::to_owned);
            let name = kid.clone().map_or_else(|| format!("key {i}"), |kid| format!("kid {kid:?}"));
            match usable(entry) {
                Ok((algorithm, key)) => keys.push(Key { kid, algorithm, key }),
                Err(why) => skipped.push(format!("{name}: {why}")),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKey(if skipped.is_empty() { "none".into() } else { skipped.join("; ") }));
        }
        Ok(Self { keys, skipped })
    }

    /// How many keys are used.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Who `token` says the caller is, if its signature, time, issuer and audience hold.
    pub fn verify(&self, token: &str, expect: &Expectations) -> Result<TokenIdentity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| header.kid.is_none() || k.kid == header.kid)
            .collect();
        if candidates.is_empty() {
            return Err(match header.kid {
                Some(kid) => TokenError::UnknownKey(kid),
                None => TokenError::Signature,
            });
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud"].into_iter().map(str::to_owned).collect();
        validation.set_issuer(&[&expect.issuer]);
        validation.set_audience(&[&expect.audience]);
        let mut last = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => return identity(&data.claims, expect),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => TokenError::Signature,
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
                        ErrorKind::InvalidIssuer => TokenError::Issuer,
                        ErrorKind::InvalidAudience => TokenError::Audience,
                        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
                        ErrorKind::InvalidToken | ErrorKind::Base64(_) => TokenError::Malformed,
                        other => TokenError::Invalid(format!("{other:?}")),
                    };
                    // Past the signature, the claims are what they are whichever key signed.
                    if last != TokenError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// The algorithm and key of a JWKS entry, or why it is not used.
fn usable(entry: &Value) -> Result<(Algorithm, DecodingKey), String> {
    if entry.get("kty").and_then(Value::as_str) == Some("oct") {
        return Err("a symmetric (oct) key: HMAC tokens are never accepted".into());
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|e| format!("not a JWK the bridge reads: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("for encryption (use \"enc\"), not signatures".into());
    }
    let algorithm = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => Algorithm::EdDSA,
        AlgorithmParameters::EllipticCurve(p) => return Err(format!("curve {:?} is not taken (P-256 is)", p.curve)),
        AlgorithmParameters::OctetKeyPair(p) => return Err(format!("curve {:?} is not taken (Ed25519 is)", p.curve)),
        AlgorithmParameters::OctetKey(_) => return Err("a symmetric key: HMAC tokens are never accepted".into()),
    };
    if let Some(named) = entry.get("alg").and_then(Value::as_str) {
        let expected = match algorithm {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        };
        if named != expected {
            return Err(format!("alg {named:?} is not taken for this key type (only {expected} is)"));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("unreadable key material: {e}"))?;
    Ok((algorithm, key))
}

/// The tenant and scopes of verified claims.
fn identity(claims: &serde_json::Map<String, Value>, expect: &Expectations) -> Result<TokenIdentity, TokenError> {
    let tenant = match claims.get(&expect.tenant_claim) {
        None => return Err(TokenError::MissingClaim(expect.tenant_claim.clone())),
        Some(Value::String(t)) if !t.trim().is_empty() => t.clone(),
        Some(_) => return Err(TokenError::Tenant(expect.tenant_claim.clone())),
    };
    let mut scopes = HashSet::new();
    for claim in ["scope", "scp"] {
        match claims.get(claim) {
            Some(Value::String(s)) => scopes.extend(s.split_whitespace().map(str::to_owned)),
            Some(Value::Array(items)) => scopes.extend(items.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
    }
    let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
    Ok(TokenIdentity { tenant, subject, scopes })
}

/// Whether a bearer credential has the shape of a JWT (three base64url parts, a JSON header),
/// rather than an API key.
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.starts_with("eyJ") && credential.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;

    // Key material is not checked at parse (the signature check does that), so placeholders do.
    const X: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    fn rsa(kid: &str) -> Value {
        serde_json::json!({"kty": "RSA", "kid": kid, "n": X, "e": "AQAB"})
    }

    fn expect() -> Expectations {
        Expectations { issuer: "iss".into(), audience: "aud".into(), tenant_claim: "tenant".into() }
    }

    #[test]
    fn symmetric_and_foreign_keys_are_skipped_and_named() {
        let document = serde_json::json!({"keys": [
            rsa("r1"),
            {"kty": "oct", "kid": "h1", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": X, "y": X},
            {"kty": "RSA", "kid": "r384", "alg": "RS384", "n": X, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": X, "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": X, "y": X},
            {"kty": "OKP", "kid": "d1", "crv": "Ed25519", "x": X},
        ]});
        let jwks = Jwks::parse(document.to_string().as_bytes()).expect("usable keys");
        assert_eq!(jwks.len(), 3, "{jwks:?}");
        let skipped = jwks.skipped.join("\n");
        for kid in ["h1", "p384", "r384", "enc"] {
            assert!(skipped.contains(&format!("kid {kid:?}")), "{kid} not named: {skipped}");
        }
        assert!(skipped.contains("HMAC"), "{skipped}");
    }

    #[test]
    fn a_jwks_without_a_usable_key_is_refused_saying_why() {
        let error = Jwks::parse(br#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#).expect_err("HMAC only");
        assert!(error.to_string().contains("HMAC"), "{error}");
        assert!(matches!(Jwks::parse(b"[]"), Err(JwksError::Shape(_))));
        assert!(matches!(Jwks::parse(b"{\"keys\": []}"), Err(JwksError::NoUsableKey(_))));
    }

    #[test]
    fn hmac_and_none_are_refused_before_any_key_and_an_unknown_kid_is_named() {
        let jwks = Jwks::parse(serde_json::json!({"keys": [rsa("r1")]}).to_string().as_bytes()).expect("jwks");
        let hs256 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2ln";
        assert_eq!(jwks.verify(hs256, &expect()), Err(TokenError::Algorithm("HS256".into())));
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
        assert_eq!(jwks.verify(none, &expect()), Err(TokenError::Malformed));
        let other = "eyJhbGciOiJSUzI1NiIsImtpZCI6Im90aGVyIn0.eyJzdWIiOiJ4In0.c2ln";
        assert_eq!(jwks.verify(other, &expect()), Err(TokenError::UnknownKey("other".into())));
        assert_eq!(jwks.verify("not-a-token", &expect()), Err(TokenError::Malformed));
    }

    #[test]
    fn scopes_come_from_scope_or_scp_and_the_tenant_from_its_claim() {
        let claims = |v: Value| v.as_object().expect("object").clone();
        let id = identity(&claims(serde_json::json!({"tenant": "acme", "scope": "predict  explain"})), &expect())
            .expect("identity");
        assert!(id.has(Scope::Predict) && id.has(Scope::Explain) && !id.has(Scope::Feedback));
        let id = identity(&claims(serde_json::json!({"tenant": "acme", "scp": ["feedback"]})), &expect()).expect("scp");
        assert!(id.has(Scope::Feedback) && !id.has(Scope::Predict));
        assert_eq!(
            identity(&claims(serde_json::json!({"tenant": 7})), &expect()),
            Err(TokenError::Tenant("tenant".into()))
        );
        assert_eq!(
            identity(&claims(serde_json::json!({"sub": "x"})), &expect()),
            Err(TokenError::MissingClaim("tenant".into()))
        );
        assert!(looks_like_jwt("eyJa.b.c") && !looks_like_jwt("acme-key") && !looks_like_jwt("eyJa.b"));
    }
}
