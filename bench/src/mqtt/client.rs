//! An MQTT 3.1.1 client over any tokio stream: connect, subscribe, publish,
//! ping and receive, one request at a time. Bench holds thousands of them,
//! so an idle client keeps no read buffer beyond what a partial packet needs.

use super::{check, ConnAck, Connect, DecodeError, Filter, Packet, Publish, QoS, Subscribe};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The largest packet a bench client accepts from a broker.
const MAX_PACKET: usize = 1 << 20;

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The broker sent bytes that are not a packet bench speaks.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// A packet too large to encode (a bench bug, not the broker's).
    #[error("encode: {0}")]
    Encode(#[from] super::EncodeError),
    /// The broker closed the connection.
    #[error("connection closed by the broker")]
    Closed,
    /// CONNACK with a nonzero return code.
    #[error("connection refused, CONNACK code {0}")]
    Refused(u8),
    /// SUBACK refused the subscription (0x80).
    #[error("subscription refused")]
    SubscribeRefused,
    /// A packet that makes no sense at this point of the exchange.
    #[error("unexpected packet: {0}")]
    Unexpected(&'static str),
}

/// One MQTT connection.
pub struct MqttClient<S> {
    stream: S,
    rbuf: BytesMut,
    /// PUBLISH and PUBACK packets that arrived while a request waited.
    queued: VecDeque<Packet>,
    next_id: u16,
}

impl<S: AsyncRead + AsyncWrite + Unpin> MqttClient<S> {
    /// Sends CONNECT on `stream` and waits for an accepting CONNACK.
    pub async fn connect(stream: S, connect: Connect) -> Result<MqttClient<S>, ClientError> {
        let mut c = MqttClient {
            stream,
            rbuf: BytesMut::new(),
            queued: VecDeque::new(),
            next_id: 1,
        };
        c.send(&Packet::Connect(connect)).await?;
        match c.read_packet().await? {
            Packet::ConnAck(ConnAck { return_code: 0, .. }) => Ok(c),
            Packet::ConnAck(ConnAck { return_code, .. }) => Err(ClientError::Refused(return_code)),
            _ => Err(ClientError::Unexpected("before CONNACK")),
        }
    }

    /// Subscribes to one topic filter; the QoS the broker granted.
    pub async fn subscribe(&mut self, topic: &str, qos: QoS) -> Result<QoS, ClientError> {
        let packet_id = self.packet_id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            filters: vec![Filter {
                topic: topic.to_string(),
                qos,
            }],
        }))
        .await?;
        loop {
            match self.read_packet().await? {
                Packet::SubAck(ack) if ack.packet_id == packet_id => {
                    return match ack.granted.as_slice() {
                        [Some(q)] => Ok(*q),
                        [None] => Err(ClientError::SubscribeRefused),
                        _ => Err(ClientError::Unexpected("SUBACK for another filter count")),
                    };
                }
                other => self.hold(other)?,
            }
        }
    }

    /// Sends a PUBLISH; for QoS 1 its packet identifier, whose PUBACK
    /// arrives through [`MqttClient::recv`].
    pub async fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        payload: Bytes,
    ) -> Result<Option<u16>, ClientError> {
        let packet_id = (qos == QoS::AtLeastOnce).then(|| self.packet_id());
        self.send(&Packet::Publish(Publish {
            topic: topic.to_string(),
            qos,
            packet_id,
            dup: false,
            retain: false,
            payload,
        }))
        .await?;
        Ok(packet_id)
    }

    /// PINGREQ, then waits for PINGRESP: proof that the broker serves this
    /// connection now.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.send(&Packet::PingReq).await?;
        loop {
            match self.read_packet().await? {
                Packet::PingResp => return Ok(()),
                other => self.hold(other)?,
            }
        }
    }

    /// The next PUBLISH or PUBACK; a QoS 1 PUBLISH is acknowledged before it
    /// is returned.
    pub async fn recv(&mut self) -> Result<Packet, ClientError> {
        let p = match self.queued.pop_front() {
            Some(p) => p,
            None => loop {
                match self.read_packet().await? {
                    Packet::PingResp => continue,
                    p @ (Packet::Publish(_) | Packet::PubAck(_)) => break p,
                    _ => return Err(ClientError::Unexpected("while receiving")),
                }
            },
        };
        if let Packet::Publish(Publish {
            packet_id: Some(id),
            ..
        }) = &p
        {
            self.send(&Packet::PubAck(*id)).await?;
        }
        Ok(p)
    }

    /// The next PUBLISH (PUBACKs for this client's own publishes are dropped).
    pub async fn recv_publish(&mut self) -> Result<Publish, ClientError> {
        loop {
            if let Packet::Publish(p) = self.recv().await? {
                return Ok(p);
            }
        }
    }

    /// DISCONNECT: a clean goodbye, so the broker logs no error.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect).await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.stream.write_all(&packet.to_bytes()?).await?;
        Ok(())
    }

    /// Keeps a packet that arrived during a request for [`MqttClient::recv`].
    fn hold(&mut self, p: Packet) -> Result<(), ClientError> {
        match p {
            Packet::Publish(_) | Packet::PubAck(_) => {
                self.queued.push_back(p);
                Ok(())
            }
            _ => Err(ClientError::Unexpected("during a request")),
        }
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_id;
        // Identifiers are nonzero (MQTT-2.3.1-1).
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    async fn read_packet(&mut self) -> Result<Packet, ClientError> {
        loop {
            if let Some(n) = check(&self.rbuf, MAX_PACKET)? {
                let packet = Packet::parse(&self.rbuf[..n]);
                self.rbuf.advance(n);
                if self.rbuf.is_empty() {
                    // An idle client gives its buffer back (see the module doc).
                    self.rbuf = BytesMut::new();
                }
                return Ok(packet?);
            }
            self.rbuf.reserve(512);
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ConnAck, SubAck};
    use super::*;
    use tokio::io::DuplexStream;

    /// The broker's end of a duplex pipe, speaking through the same codec.
    struct FakeBroker {
        io: DuplexStream,
        buf: BytesMut,
    }

    impl FakeBroker {
        async fn expect(&mut self) -> Packet {
            loop {
                if let Some(n) = check(&self.buf, MAX_PACKET).unwrap() {
                    let p = Packet::parse(&self.buf[..n]).unwrap();
                    self.buf.advance(n);
                    return p;
                }
                assert!(self.io.read_buf(&mut self.buf).await.unwrap() > 0, "closed");
            }
        }

        async fn send(&mut self, p: Packet) {
            self.io.write_all(&p.to_bytes().unwrap()).await.unwrap();
        }
    }

    fn pair() -> (DuplexStream, FakeBroker) {
        let (a, b) = tokio::io::duplex(4096);
        (
            a,
            FakeBroker {
                io: b,
                buf: BytesMut::new(),
            },
        )
    }

    fn hello() -> Connect {
        Connect {
            client_id: "t".into(),
            keep_alive_s: 0,
            clean_session: true,
        }
    }

    fn publish(id: Option<u16>, payload: &'static [u8]) -> Packet {
        Packet::Publish(Publish {
            topic: "t".into(),
            qos: if id.is_some() {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            packet_id: id,
            dup: false,
            retain: false,
            payload: Bytes::from_static(payload),
        })
    }

    #[tokio::test]
    async fn subscribe_then_receive_and_acknowledge_qos1() {
        let (io, mut broker) = pair();
        let client = tokio::spawn(async move {
            let mut c = MqttClient::connect(io, hello()).await?;
            let granted = c.subscribe("t", QoS::AtLeastOnce).await?;
            let first = c.recv_publish().await?;
            let second = c.recv_publish().await?;
            c.ping().await?;
            Ok::<_, ClientError>((granted, first.payload, second.payload))
        });
        assert!(matches!(broker.expect().await, Packet::Connect(c) if c.clean_session));
        broker
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: 0,
            }))
            .await;
        let Packet::Subscribe(s) = broker.expect().await else {
            panic!("SUBSCRIBE expected");
        };
        // A message racing the SUBACK is kept, not lost.
        broker.send(publish(None, b"early")).await;
        broker
            .send(Packet::SubAck(SubAck {
                packet_id: s.packet_id,
                granted: vec![Some(QoS::AtLeastOnce)],
            }))
            .await;
        broker.send(publish(Some(9), b"late")).await;
        assert_eq!(broker.expect().await, Packet::PubAck(9));
        assert_eq!(broker.expect().await, Packet::PingReq);
        broker.send(Packet::PingResp).await;
        let (granted, first, second) = client.await.unwrap().unwrap();
        assert_eq!(granted, QoS::AtLeastOnce);
        assert_eq!((&first[..], &second[..]), (&b"early"[..], &b"late"[..]));
    }

    #[tokio::test]
    async fn refusals_and_garbage_are_errors() {
        let (io, mut broker) = pair();
        let client = tokio::spawn(MqttClient::connect(io, hello()));
        broker.expect().await;
        broker
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: 5,
            }))
            .await;
        assert!(matches!(
            client.await.unwrap(),
            Err(ClientError::Refused(5))
        ));

        let (io, mut broker) = pair();
        let client = tokio::spawn(MqttClient::connect(io, hello()));
        broker.expect().await;
        broker.io.write_all(&[0xf0, 0x00]).await.unwrap();
        assert!(matches!(
            client.await.unwrap(),
            Err(ClientError::Decode(DecodeError::ReservedType(15)))
        ));

        let (io, mut broker) = pair();
        let client = tokio::spawn(MqttClient::connect(io, hello()));
        broker.expect().await;
        drop(broker);
        assert!(matches!(client.await.unwrap(), Err(ClientError::Closed)));
    }

    #[tokio::test]
    async fn qos1_publishes_get_distinct_nonzero_ids() {
        let (io, mut broker) = pair();
        let client = tokio::spawn(async move {
            let mut c = MqttClient::connect(io, hello()).await?;
            c.next_id = u16::MAX;
            let a = c.publish("t", QoS::AtLeastOnce, Bytes::new()).await?;
            let b = c.publish("t", QoS::AtLeastOnce, Bytes::new()).await?;
            let acked = c.recv().await?;
            Ok::<_, ClientError>((a, b, acked))
        });
        broker.expect().await;
        broker
            .send(Packet::ConnAck(ConnAck {
                session_present: false,
                return_code: 0,
            }))
            .await;
        broker.expect().await;
        broker.expect().await;
        broker.send(Packet::PubAck(u16::MAX)).await;
        let (a, b, acked) = client.await.unwrap().unwrap();
        assert_eq!((a, b), (Some(u16::MAX), Some(1)));
        assert_eq!(acked, Packet::PubAck(u16::MAX));
    }
}
