//! Decode errors and the client-facing ERROR code table.

/// Why bytes from a peer are not a v1 frame. `Incomplete` is not here: "need
/// more bytes" is `Ok(None)` from [`crate::Header::check`], never an error.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The first two bytes are not `0x5447`.
    #[error("bad magic 0x{0:04x}, expected 0x5447")]
    BadMagic(u16),
    /// A protocol version this build does not speak.
    #[error("unsupported version {0}")]
    BadVersion(u8),
    /// `body_len` exceeds the configured maximum (checked before any allocation).
    #[error("body too large: {len} bytes, max {max}")]
    BodyTooLarge {
        /// Announced body length.
        len: u32,
        /// Configured maximum.
        max: u32,
    },
    /// A command code that is not in the table.
    #[error("unknown cmd 0x{0:04x}")]
    UnknownCmd(u16),
    /// The body is not the protobuf message the command requires.
    #[error("bad body: {0}")]
    BadBody(#[from] prost::DecodeError),
}

impl DecodeError {
    /// The ERROR code this failure is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadMagic(_) => ErrorCode::BadFrame,
            DecodeError::BadVersion(_) => ErrorCode::UnsupportedVersion,
            DecodeError::BodyTooLarge { .. } => ErrorCode::BodyTooLarge,
            DecodeError::UnknownCmd(_) => ErrorCode::UnknownCmd,
            DecodeError::BadBody(_) => ErrorCode::BadBody,
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            DecodeError::BadMagic(_) => "bad_magic",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::BodyTooLarge { .. } => "body_too_large",
            DecodeError::UnknownCmd(_) => "unknown_cmd",
            DecodeError::BadBody(_) => "bad_body",
        }
    }

    /// Whether the stream can go on after this error. A bad body is
    /// self-delimiting (the frame was skipped whole), everything else means
    /// the peer's framing cannot be trusted.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, DecodeError::BadBody(_) | DecodeError::UnknownCmd(_))
    }
}

/// Stable codes carried in `Error.code`. Never renumber; add at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    /// Framing is broken (bad magic); the connection is closed.
    BadFrame = 1,
    /// The header's version is not 1; the connection is closed.
    UnsupportedVersion = 2,
    /// The token is invalid, expired, or for another app.
    AuthFailed = 3,
    /// No LOGIN within the auth timeout; the connection is closed.
    AuthTimeout = 4,
    /// `body_len` exceeds the maximum; the connection is closed.
    BodyTooLarge = 5,
    /// The command is not in the table, or not one a client may send.
    UnknownCmd = 6,
    /// The body does not decode as the command's message.
    BadBody = 7,
    /// The command needs a logged-in session.
    NotLoggedIn = 8,
    /// A second LOGIN on a session that is logged in or logging in.
    AlreadyLoggedIn = 9,
    /// Rate limit exceeded; slow down and retry.
    Throttled = 10,
    /// The server sheds load; retry with backoff.
    Busy = 11,
    /// No logic service or store is reachable; retry with backoff.
    Unavailable = 12,
    /// The client (IP, uid or app) is banned.
    Banned = 13,
    /// The app code is not configured.
    UnknownApp = 14,
    /// An unexpected server-side failure; retry.
    Internal = 15,
}

impl ErrorCode {
    /// Maps a wire code back; `None` for codes this build does not know.
    pub fn from_u32(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            1 => BadFrame,
            2 => UnsupportedVersion,
            3 => AuthFailed,
            4 => AuthTimeout,
            5 => BodyTooLarge,
            6 => UnknownCmd,
            7 => BadBody,
            8 => NotLoggedIn,
            9 => AlreadyLoggedIn,
            10 => Throttled,
            11 => Busy,
            12 => Unavailable,
            13 => Banned,
            14 => UnknownApp,
            15 => Internal,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// True when the client should retry the same request later.
    pub fn is_temporary(self) -> bool {
        matches!(
            self,
            ErrorCode::Throttled | ErrorCode::Busy | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }

    /// Short snake_case name, used as a metric label and in docs.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadFrame => "bad_frame",
            UnsupportedVersion => "unsupported_version",
            AuthFailed => "auth_failed",
            AuthTimeout => "auth_timeout",
            BodyTooLarge => "body_too_large",
            UnknownCmd => "unknown_cmd",
            BadBody => "bad_body",
            NotLoggedIn => "not_logged_in",
            AlreadyLoggedIn => "already_logged_in",
            Throttled => "throttled",
            Busy => "busy",
            Unavailable => "unavailable",
            Banned => "banned",
            UnknownApp => "unknown_app",
            Internal => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 0..64 {
            if let Some(e) = ErrorCode::from_u32(code) {
                assert_eq!(e.code(), code);
            }
        }
        assert_eq!(ErrorCode::from_u32(0), None);
    }
}
