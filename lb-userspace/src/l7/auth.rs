//! Authentication and authorization, a route's first request filter (`auth`, `allow`).
//!
//! The caller's credential is looked for in the order of the route's `auth` list: a bearer JWT
//! or HTTP Basic in `Authorization`, an API key in `[gateway] api_key_header` (or
//! `api_key_query`). The first one present decides: a credential that fails is a 401 at once,
//! and never falls through to the next method (as in Envoy's `jwt_authn`), so a bad token is
//! not retried as something else. No credential at all is a 401 with a `WWW-Authenticate`
//! challenge per method. A caller who proves who it is, but is not in the route's `allow`
//! list, gets a 403. Neither body repeats the credential.
//!
//! On success the credential is removed from the request (unless `pass_credentials`), the
//! consumer's name is set in `consumer_header` (always replacing what the client sent, so a
//! client cannot name itself), and the name is kept in the request's extensions as [`Caller`]
//! for the rate limit and the access log.
//!
//! API keys are found by the SHA-256 digest of the presented key in a hash map. The map
//! compares digests of the attacker's input, which the attacker cannot steer, so its timing
//! says nothing about a stored key. A Basic password is compared with its consumer's digest in
//! constant time (`subtle`), and an unknown user costs the same digest and comparison.

use std::{collections::HashMap, sync::Arc};

use base64::Engine as _;
use hyper::{
    StatusCode, header,
    http::{HeaderName, HeaderValue, request::Parts, uri::PathAndQuery},
};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use subtle::ConstantTimeEq as _;

use super::{
    filter::{Held, RequestFilter, Verdict},
    headers::ClientInfo,
};
use crate::config::{Allow, AuthMethod, Gateway, Policy};

/// The authenticated consumer of a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub Arc<str>);

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

struct Verifier {
    /// Key id (`kid`), key and algorithm.
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
    /// `iss`, `aud`, leeway and the time claims; its algorithm is set per token.
    validation: Validation,
    algorithms: Vec<Algorithm>,
    claim: String,
}

/// Why a presented credential was refused (never the credential itself).
fn token_error(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidAudience => "the token is for another audience (aud)",
        ErrorKind::InvalidIssuer => "the token is from another issuer (iss)",
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim (exp)",
        ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted",
        _ => "the token is malformed",
    }
}

impl Verifier {
    fn new(jwt: &crate::config::Jwt) -> Verifier {
        let keys = jwt
            .keys
            .iter()
            .filter_map(|(jwk, alg)| {
                // Checked when the config was loaded.
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone(), key, *alg))
            })
            .collect();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = jwt.leeway.as_secs();
        validation.validate_nbf = true;
        if jwt.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&jwt.audience);
        }
        if !jwt.issuer.is_empty() {
            validation.set_issuer(&jwt.issuer);
        }
        Verifier {
            keys,
            validation,
            algorithms: jwt.algorithms.clone(),
            claim: jwt.consumer_claim.clone(),
        }
    }

    /// The consumer a token names, or why it is refused.
    fn verify(&self, token: &str) -> Result<String, &'static str> {
        let head = jsonwebtoken::decode_header(token).map_err(|_| "the token is malformed")?;
        if !self.algorithms.contains(&head.alg) {
            return Err("the token's algorithm is not accepted");
        }
        let mut validation = self.validation.clone();
        validation.algorithms = vec![head.alg];
        let mut refused = "no key of the issuer matches the token (kid)";
        for (kid, key, alg) in &self.keys {
            if *alg != head.alg || (head.kid.is_some() && kid.is_some() && *kid != head.kid) {
                continue;
            }
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                key,
                &validation,
            ) {
                Ok(data) => {
                    return match data.claims.get(&self.claim) {
                        Some(serde_json::Value::String(name)) if !name.is_empty() => {
                            Ok(name.clone())
                        }
                        _ => Err("the token does not name its consumer"),
                    };
                }
                // Another key of the set may have signed it.
                Err(e) if *e.kind() == ErrorKind::InvalidSignature => {
                    refused = token_error(e.kind());
                }
                Err(e) => return Err(token_error(e.kind())),
            }
        }
        Err(refused)
    }
}

/// Every credential of a config, ready to check; shared by the routes of all services.
pub struct Credentials {
    names: Vec<Arc<str>>,
    groups: Vec<Vec<String>>,
    /// API key digest to consumer.
    by_key: HashMap<[u8; 32], usize>,
    /// Basic user name to consumer and password digest.
    by_user: HashMap<String, (usize, [u8; 32])>,
    key_header: HeaderName,
    key_query: Option<String>,
    jwt: Option<Verifier>,
}

impl Credentials {
    pub fn new(g: &Gateway) -> Credentials {
        let mut by_key = HashMap::new();
        let mut by_user = HashMap::new();
        for (i, c) in g.consumers.iter().enumerate() {
            for k in &c.api_keys {
                by_key.insert(*k, i);
            }
            if let Some(p) = c.basic_password {
                by_user.insert(c.name.clone(), (i, p));
            }
        }
        Credentials {
            names: g.consumers.iter().map(|c| c.name.as_str().into()).collect(),
            groups: g.consumers.iter().map(|c| c.groups.clone()).collect(),
            by_key,
            by_user,
            key_header: g.api_key_header.clone(),
            key_query: g.api_key_query.clone(),
            jwt: g.jwt.as_ref().map(Verifier::new),
        }
    }

    /// `[gateway] api_key_query`.
    pub fn key_query(&self) -> Option<&str> {
        self.key_query.as_deref()
    }

    fn groups_of(&self, name: &str) -> &[String] {
        self.names
            .iter()
            .position(|n| &**n == name)
            .map_or(&[], |i| &self.groups[i])
    }

    fn api_key<'a>(&self, head: &'a Parts) -> Option<std::borrow::Cow<'a, str>> {
        if let Some(v) = head.headers.get(&self.key_header) {
            return Some(String::from_utf8_lossy(v.as_bytes()));
        }
        let q = self.key_query.as_deref()?;
        form_urlencoded::parse(head.uri.query()?.as_bytes())
            .find(|(k, _)| k == q)
            .map(|(_, v)| v)
    }

    fn basic(&self, encoded: &str) -> Result<Arc<str>, &'static str> {
        let refused = "the user name or password is wrong";
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| "the Basic credentials are malformed")?;
        let text = String::from_utf8(decoded).map_err(|_| "the Basic credentials are malformed")?;
        let (user, password) = text
            .split_once(':')
            .ok_or("the Basic credentials are malformed")?;
        let given = sha256(password.as_bytes());
        let (index, want) = self
            .by_user
            .get(user)
            .copied()
            .unwrap_or((usize::MAX, [0; 32]));
        let same: bool = given.ct_eq(&want).into();
        if same && index != usize::MAX {
            Ok(self.names[index].clone())
        } else {
            Err(refused)
        }
    }
}

/// Splits `Authorization` into its scheme (lower case) and credentials.
fn authorization(head: &Parts) -> Option<(String, &str)> {
    let v = head.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    Some((scheme.to_ascii_lowercase(), rest.trim()))
}

/// The `auth` filter of one route.
pub struct Authenticate {
    methods: Vec<AuthMethod>,
    allow: Vec<Allow>,
    pass: bool,
    consumer_header: Option<HeaderName>,
    credentials: Arc<Credentials>,
    /// One `WWW-Authenticate` value per method.
    challenges: Vec<HeaderValue>,
    /// What a 401 without credentials says is wanted.
    wanted: String,
}

impl Authenticate {
    pub fn new(policy: &Policy, credentials: Arc<Credentials>) -> Authenticate {
        let challenges = policy
            .auth
            .iter()
            .map(|m| match m {
                AuthMethod::Jwt => HeaderValue::from_static("Bearer realm=\"understudy\""),
                AuthMethod::Basic => HeaderValue::from_static("Basic realm=\"understudy\""),
                AuthMethod::ApiKey => HeaderValue::from_str(&format!(
                    "ApiKey realm=\"understudy\", header=\"{}\"",
                    credentials.key_header
                ))
                .expect("a header name is a valid value"),
            })
            .collect();
        let wanted = policy
            .auth
            .iter()
            .map(|m| match m {
                AuthMethod::Jwt => "a bearer token".to_string(),
                AuthMethod::Basic => "HTTP Basic credentials".to_string(),
                AuthMethod::ApiKey => format!("an API key in {}", credentials.key_header),
            })
            .collect::<Vec<_>>()
            .join(" or ");
        Authenticate {
            methods: policy.auth.clone(),
            allow: policy.allow.clone(),
            pass: policy.pass_credentials,
            consumer_header: policy.consumer_header.clone(),
            credentials,
            challenges,
            wanted,
        }
    }

    fn unauthorized(&self, reason: String) -> Verdict {
        Verdict::Respond {
            status: StatusCode::UNAUTHORIZED,
            reason,
            headers: self
                .challenges
                .iter()
                .map(|c| (header::WWW_AUTHENTICATE, c.clone()))
                .collect(),
        }
    }

    /// The consumer the request's credential proves, `None` if it carries none.
    fn authenticate(&self, head: &Parts) -> Option<Result<Arc<str>, (AuthMethod, &'static str)>> {
        let c = &self.credentials;
        let auth = authorization(head);
        for m in &self.methods {
            match m {
                AuthMethod::Jwt => {
                    if let (Some(v), Some((scheme, token))) = (&c.jwt, &auth)
                        && scheme == "bearer"
                    {
                        return Some(v.verify(token).map(Into::into).map_err(|e| (*m, e)));
                    }
                }
                AuthMethod::Basic => {
                    if let Some((scheme, encoded)) = &auth
                        && scheme == "basic"
                    {
                        return Some(c.basic(encoded).map_err(|e| (*m, e)));
                    }
                }
                AuthMethod::ApiKey => {
                    if let Some(key) = c.api_key(head) {
                        let found = c.by_key.get(&sha256(key.as_bytes()));
                        return Some(
                            found
                                .map(|i| c.names[*i].clone())
                                .ok_or((*m, "the API key is not known")),
                        );
                    }
                }
            }
        }
        None
    }

    fn allowed(&self, name: &str) -> bool {
        self.allow.is_empty()
            || self.allow.iter().any(|a| match a {
                Allow::Consumer(c) => c == name,
                Allow::Group(g) => self.credentials.groups_of(name).contains(g),
            })
    }

    /// Removes the credentials this route reads.
    fn strip(&self, head: &mut Parts) {
        let c = &self.credentials;
        if self.methods.iter().any(|m| *m != AuthMethod::ApiKey) {
            head.headers.remove(header::AUTHORIZATION);
        }
        if !self.methods.contains(&AuthMethod::ApiKey) {
            return;
        }
        head.headers.remove(&c.key_header);
        let Some(pq) = c.key_query.as_deref().and_then(|q| {
            let pq = head.uri.path_and_query()?.as_str();
            super::headers::with_query_param(pq, q, None)
        }) else {
            return;
        };
        let mut parts = head.uri.clone().into_parts();
        if let Ok(pq) = PathAndQuery::try_from(pq) {
            parts.path_and_query = Some(pq);
            if let Ok(uri) = hyper::Uri::from_parts(parts) {
                head.uri = uri;
            }
        }
    }
}

impl RequestFilter for Authenticate {
    fn name(&self) -> &'static str {
        "auth"
    }

    fn on_request(&self, head: &mut Parts, _: &ClientInfo, _: &mut Held) -> Verdict {
        let name = match self.authenticate(head) {
            None => {
                return self.unauthorized(format!("authentication required: send {}", self.wanted));
            }
            Some(Err((method, why))) => {
                return self.unauthorized(format!("{} refused: {why}", method.as_str()));
            }
            Some(Ok(name)) => name,
        };
        if !self.allowed(&name) {
            return Verdict::respond(
                StatusCode::FORBIDDEN,
                format!("consumer {name} may not use this route"),
            );
        }
        if !self.pass {
            self.strip(head);
        }
        if let Some(h) = &self.consumer_header {
            head.headers.remove(h);
            if let Ok(v) = HeaderValue::from_str(&name) {
                head.headers.insert(h.clone(), v);
            }
        }
        head.extensions.insert(Caller(name));
        Verdict::Continue
    }
}
