//! The command table (ARCHITECTURE §3). Codes are fixed: any client in any
//! language can speak v1 from this table alone.

/// A frame's command. Unknown codes are a [`crate::DecodeError::UnknownCmd`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Cmd {
    /// c→s, reply s→c: `Login` / `LoginOk`.
    Login = 0x0001,
    /// c→s, reply: empty.
    Logout = 0x0002,
    /// c→s, reply: empty; answered by the gateway itself.
    Keepalive = 0x0003,
    /// s→c then close: `Kickout`.
    Kickout = 0x0004,
    /// c→s: `Payload` for the app's bus; reply when ack-requested.
    C2s = 0x0010,
    /// s→c: `Push`.
    S2c = 0x0011,
    /// c→s: `PushAck`.
    S2cAck = 0x0012,
    /// c2c message from sender (msg:R).
    C2c = 0x0020,
    /// c2c stored, to sender (msg:A).
    C2cAck = 0x0021,
    /// c2c delivery to receiver (msg:N).
    C2cDeliver = 0x0022,
    /// receiver acknowledges (ack:R).
    C2cRecvAck = 0x0023,
    /// server confirms the receiver's ack (ack:A).
    C2cRecvAckAck = 0x0024,
    /// read receipt to sender (ack:N).
    C2cReceipt = 0x0025,
    /// c→s: pull offline messages.
    OfflinePull = 0x0030,
    /// s→c: a batch of offline messages.
    OfflineBatch = 0x0031,
    /// c→s: delete offline messages up to a cursor.
    OfflineAck = 0x0032,
    /// c→s: message to a group.
    GroupSend = 0x0040,
    /// s→c: group message delivery.
    GroupDeliver = 0x0041,
    /// c→s: group cursor acknowledgement.
    GroupAck = 0x0042,
    /// c→s: subscribe to contacts' presence.
    PresenceSub = 0x0050,
    /// s→c: a contact's presence changed.
    PresenceEvent = 0x0051,
    /// s→c: `Error`.
    Error = 0x00FF,
    /// link: gate shard introduces itself (`LinkHello` / `LinkWelcome`).
    LinkHello = 0x8001,
    /// link: forwarded LOGIN (`LinkLogin` / `LinkLoginReply`).
    LinkLogin = 0x8002,
    /// link: a session ended (`LinkSessionClosed`).
    LinkSessionClosed = 0x8003,
    /// link: forwarded C2S (`LinkC2s` / `LinkC2sReply`).
    LinkC2s = 0x8004,
    /// link: deliver an encoded frame to connections (`LinkDeliver`).
    LinkDeliver = 0x8005,
    /// link: kick a connection (`LinkKick`).
    LinkKick = 0x8006,
    /// link: liveness probe, answered with the response flag; empty body.
    LinkPing = 0x8007,
    /// link: forwarded S2C_ACK (`LinkS2cAck`).
    LinkS2cAck = 0x8008,
    /// link: gate shard liveness and load, renews the gate lease (`LinkHeartbeat`).
    LinkHeartbeat = 0x8009,
    /// link: one frame to every session of an app on a shard (`LinkBroadcast` / `LinkBroadcastReply`).
    LinkBroadcast = 0x800A,
    /// link: a logged-in client's request that logic answers with a client
    /// frame (`LinkForward` / `LinkForwardReply`).
    LinkForward = 0x800B,
}

impl Cmd {
    /// Maps a wire code to a command; `None` for codes not in the table.
    pub fn from_u16(code: u16) -> Option<Cmd> {
        use Cmd::*;
        Some(match code {
            0x0001 => Login,
            0x0002 => Logout,
            0x0003 => Keepalive,
            0x0004 => Kickout,
            0x0010 => C2s,
            0x0011 => S2c,
            0x0012 => S2cAck,
            0x0020 => C2c,
            0x0021 => C2cAck,
            0x0022 => C2cDeliver,
            0x0023 => C2cRecvAck,
            0x0024 => C2cRecvAckAck,
            0x0025 => C2cReceipt,
            0x0030 => OfflinePull,
            0x0031 => OfflineBatch,
            0x0032 => OfflineAck,
            0x0040 => GroupSend,
            0x0041 => GroupDeliver,
            0x0042 => GroupAck,
            0x0050 => PresenceSub,
            0x0051 => PresenceEvent,
            0x00FF => Error,
            0x8001 => LinkHello,
            0x8002 => LinkLogin,
            0x8003 => LinkSessionClosed,
            0x8004 => LinkC2s,
            0x8005 => LinkDeliver,
            0x8006 => LinkKick,
            0x8007 => LinkPing,
            0x8008 => LinkS2cAck,
            0x8009 => LinkHeartbeat,
            0x800A => LinkBroadcast,
            0x800B => LinkForward,
            _ => return None,
        })
    }

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// True for gate⇄logic link commands, which a client may never send.
    pub fn is_link(self) -> bool {
        self.code() >= 0x8000
    }

    /// Short lowercase name, used as a metric label.
    pub fn name(self) -> &'static str {
        use Cmd::*;
        match self {
            Login => "login",
            Logout => "logout",
            Keepalive => "keepalive",
            Kickout => "kickout",
            C2s => "c2s",
            S2c => "s2c",
            S2cAck => "s2c_ack",
            C2c => "c2c",
            C2cAck => "c2c_ack",
            C2cDeliver => "c2c_deliver",
            C2cRecvAck => "c2c_recv_ack",
            C2cRecvAckAck => "c2c_recv_ack_ack",
            C2cReceipt => "c2c_receipt",
            OfflinePull => "offline_pull",
            OfflineBatch => "offline_batch",
            OfflineAck => "offline_ack",
            GroupSend => "group_send",
            GroupDeliver => "group_deliver",
            GroupAck => "group_ack",
            PresenceSub => "presence_sub",
            PresenceEvent => "presence_event",
            Error => "error",
            LinkHello => "link_hello",
            LinkLogin => "link_login",
            LinkSessionClosed => "link_session_closed",
            LinkC2s => "link_c2s",
            LinkDeliver => "link_deliver",
            LinkKick => "link_kick",
            LinkPing => "link_ping",
            LinkS2cAck => "link_s2c_ack",
            LinkHeartbeat => "link_heartbeat",
            LinkBroadcast => "link_broadcast",
            LinkForward => "link_forward",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0..=u16::MAX {
            if let Some(cmd) = Cmd::from_u16(code) {
                assert_eq!(cmd.code(), code);
                assert_eq!(cmd.is_link(), code >= 0x8000);
            }
        }
    }
}
