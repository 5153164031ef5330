//! Client and app-server authentication: HS256 JWTs signed with an app's
//! secret (two accepted during a rotation) and per-app API keys.

use crate::config::AppConfig;
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, EncodingKey, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tidegate_proto::AppCode;

/// Token claims (ARCHITECTURE §4 login).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The uid.
    pub sub: String,
    /// The app code the token is valid for.
    pub app: u16,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Optional device id the token is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// Why a token was refused; the text goes to the client in ERROR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The app code is not configured.
    #[error("unknown app {0}")]
    UnknownApp(u16),
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// Signed with no secret of this app.
    #[error("bad token signature")]
    BadSignature,
    /// Valid token, but for another app.
    #[error("token is for app {token}, not app {header}")]
    WrongApp {
        /// `app` claim.
        token: u16,
        /// Header appcode.
        header: u16,
    },
    /// Bound to a different device.
    #[error("token is bound to another device")]
    WrongDevice,
    /// Anything else malformed.
    #[error("malformed token: {0}")]
    Malformed(String),
}

struct AppKeys {
    decoding: Vec<DecodingKey>,
    encoding: EncodingKey,
    api_key: String,
}

/// Every app's keys, indexed by code.
pub struct Auth {
    apps: HashMap<u16, AppKeys>,
    validation: Validation,
}

impl Auth {
    /// Builds keys from config (validated already).
    pub fn new(apps: &[AppConfig], leeway_s: u64) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let apps = apps
            .iter()
            .map(|a| {
                let keys = AppKeys {
                    decoding: a
                        .secrets
                        .iter()
                        .map(|s| DecodingKey::from_secret(s.as_bytes()))
                        .collect(),
                    encoding: EncodingKey::from_secret(a.secrets[0].as_bytes()),
                    api_key: a.api_key.clone(),
                };
                (a.code, keys)
            })
            .collect();
        Auth { apps, validation }
    }

    /// Verifies a client token for `app` (and `device`, if the token binds one).
    pub fn verify(&self, app: AppCode, token: &str, device: &str) -> Result<Claims, AuthError> {
        let keys = self.apps.get(&app.0).ok_or(AuthError::UnknownApp(app.0))?;
        let mut last = AuthError::BadSignature;
        for key in &keys.decoding {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => {
                    let c = data.claims;
                    if c.app != app.0 {
                        return Err(AuthError::WrongApp {
                            token: c.app,
                            header: app.0,
                        });
                    }
                    if c.dev.as_deref().is_some_and(|d| d != device) {
                        return Err(AuthError::WrongDevice);
                    }
                    return Ok(c);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::BadSignature,
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        other => AuthError::Malformed(format!("{other:?}")),
                    };
                    if !matches!(last, AuthError::BadSignature) {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    /// Mints a token for `uid` signed with the app's first secret.
    pub fn mint(&self, app: AppCode, uid: &str, ttl_s: u64) -> Result<String, AuthError> {
        let keys = self.apps.get(&app.0).ok_or(AuthError::UnknownApp(app.0))?;
        let claims = Claims {
            sub: uid.to_string(),
            app: app.0,
            exp: tidegate_proto::now_ms() / 1000 + ttl_s,
            dev: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &keys.encoding,
        )
        .map_err(|e| AuthError::Malformed(e.to_string()))
    }

    /// The app an API key belongs to. Compares in constant time per app so
    /// response timing does not leak key prefixes.
    pub fn app_for_api_key(&self, key: &str) -> Option<AppCode> {
        self.apps
            .iter()
            .find(|(_, k)| constant_time_eq(k.api_key.as_bytes(), key.as_bytes()))
            .map(|(code, _)| AppCode(*code))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        let apps = vec![
            AppConfig {
                code: 1,
                name: "one".into(),
                secrets: vec![
                    "new-secret-0123456789".into(),
                    "old-secret-0123456789".into(),
                ],
                api_key: "key-one-0123456789".into(),
                c2s_max_len: None,
                offline_max_len: None,
                device_policy: Default::default(),
                c2s_webhook: None,
            },
            AppConfig {
                code: 2,
                name: "two".into(),
                secrets: vec!["two-secret-0123456789".into()],
                api_key: "key-two-0123456789".into(),
                c2s_max_len: None,
                offline_max_len: None,
                device_policy: Default::default(),
                c2s_webhook: None,
            },
        ];
        Auth::new(&apps, 0)
    }

    fn sign(secret: &str, claims: &Claims) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn claims(app: u16, exp_in: i64) -> Claims {
        Claims {
            sub: "alice".into(),
            app,
            exp: ((tidegate_proto::now_ms() / 1000) as i64 + exp_in) as u64,
            dev: None,
        }
    }

    #[test]
    fn minted_tokens_verify() {
        let a = auth();
        let t = a.mint(AppCode(1), "alice", 60).unwrap();
        assert_eq!(a.verify(AppCode(1), &t, "d").unwrap().sub, "alice");
    }

    #[test]
    fn both_rotation_secrets_verify_and_others_do_not() {
        let a = auth();
        let old = sign("old-secret-0123456789", &claims(1, 60));
        assert!(a.verify(AppCode(1), &old, "d").is_ok());
        let foreign = sign("two-secret-0123456789", &claims(1, 60));
        assert_eq!(
            a.verify(AppCode(1), &foreign, "d").unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn app_a_token_never_logs_in_to_app_b() {
        let a = auth();
        let t = a.mint(AppCode(2), "alice", 60).unwrap();
        assert!(a.verify(AppCode(1), &t, "d").is_err());
        let t = sign("two-secret-0123456789", &claims(1, 60));
        assert!(
            a.verify(AppCode(2), &t, "d").is_err(),
            "app claim must match"
        );
    }

    #[test]
    fn expired_and_garbage_tokens_are_typed() {
        let a = auth();
        let t = sign("new-secret-0123456789", &claims(1, -120));
        assert_eq!(
            a.verify(AppCode(1), &t, "d").unwrap_err(),
            AuthError::Expired
        );
        assert!(matches!(
            a.verify(AppCode(1), "not.a.jwt", "d"),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            a.verify(AppCode(9), "x", "d").unwrap_err(),
            AuthError::UnknownApp(9)
        );
    }

    #[test]
    fn api_keys_map_to_their_app() {
        let a = auth();
        assert_eq!(a.app_for_api_key("key-two-0123456789"), Some(AppCode(2)));
        assert_eq!(a.app_for_api_key("key-two-012345678"), None);
    }
}
