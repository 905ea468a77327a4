//! Encoding of the client's messages: Allocate, Refresh, CreatePermission and ChannelBind
//! requests (RFC 8656 §7.1, §8.1, §10.1, §12.1) and Send indications (§11.1).

use std::net::SocketAddr;

use stun::credentials::LongTerm;
use stun::wire::{Class, MessageWriter, TransactionId, attr, message_type};

use super::{AddressFamily, ClientError, Config, Request};
use crate::proto;

/// Room for the fixed attributes and the credentials (USERNAME, REALM and NONCE may each be
/// up to 763 bytes; PASSWORD-ALGORITHMS is small).
const REQUEST_BUF: usize = 4096;

/// Encode `request` with transaction ID `id`, signed with `auth` when given.
pub(crate) fn encode_request(
    request: &Request,
    id: &TransactionId,
    config: &Config,
    auth: Option<&LongTerm>,
) -> Result<Vec<u8>, ClientError> {
    let mut buf = vec![0u8; REQUEST_BUF];
    let wire = |e: stun::wire::WireError| ClientError::Credentials(e.into());
    let method = match request {
        Request::Allocate => proto::ALLOCATE,
        Request::Refresh { .. } => proto::REFRESH,
        Request::CreatePermission { .. } => proto::CREATE_PERMISSION,
        Request::ChannelBind { .. } => proto::CHANNEL_BIND,
    };
    let mut w =
        MessageWriter::new(&mut buf, message_type(method, Class::Request), id).map_err(wire)?;
    match *request {
        Request::Allocate => {
            w.attribute(attr::REQUESTED_TRANSPORT, &[proto::PROTOCOL_UDP, 0, 0, 0])
                .map_err(wire)?;
            if let Some(family) = config.family {
                let f = match family {
                    AddressFamily::V4 => proto::FAMILY_IPV4,
                    AddressFamily::V6 => proto::FAMILY_IPV6,
                };
                w.attribute(attr::REQUESTED_ADDRESS_FAMILY, &[f, 0, 0, 0])
                    .map_err(wire)?;
            }
            if let Some(l) = config.lifetime {
                let secs = u32::try_from(l.as_secs()).unwrap_or(u32::MAX);
                w.u32_attribute(attr::LIFETIME, secs).map_err(wire)?;
            }
        }
        Request::Refresh { lifetime } => {
            if let Some(secs) = lifetime {
                w.u32_attribute(attr::LIFETIME, secs).map_err(wire)?;
            }
        }
        Request::CreatePermission { peer } => {
            w.address(attr::XOR_PEER_ADDRESS, peer).map_err(wire)?;
        }
        Request::ChannelBind { peer, channel } => {
            let [hi, lo] = channel.to_be_bytes();
            w.attribute(attr::CHANNEL_NUMBER, &[hi, lo, 0, 0])
                .map_err(wire)?;
            w.address(attr::XOR_PEER_ADDRESS, peer).map_err(wire)?;
        }
    }
    if let Some(auth) = auth {
        auth.authenticate(&mut w)?;
    }
    let n = w.finish();
    buf.truncate(n);
    Ok(buf)
}

/// Encode a Send indication carrying `data` to `peer` (no integrity: indications cannot be
/// authenticated, RFC 8656 §11).
pub(crate) fn encode_send(
    id: &TransactionId,
    peer: SocketAddr,
    data: &[u8],
) -> Result<Vec<u8>, ClientError> {
    let size = stun::wire::HEADER_LEN
        + MessageWriter::address_size(&peer)
        + MessageWriter::attribute_size(data.len());
    let mut buf = vec![0u8; size];
    let too_large = |_| ClientError::TooLarge(data.len());
    let mut w = MessageWriter::new(&mut buf, message_type(proto::SEND, Class::Indication), id)
        .map_err(too_large)?;
    w.address(attr::XOR_PEER_ADDRESS, peer).map_err(too_large)?;
    w.attribute(attr::DATA, data).map_err(too_large)?;
    let n = w.finish();
    buf.truncate(n);
    Ok(buf)
}

/// Encode ChannelData, padded when `padded` (TCP/TLS).
pub(crate) fn encode_channel_data(
    channel: u16,
    data: &[u8],
    padded: bool,
) -> Result<Vec<u8>, ClientError> {
    let mut buf = vec![0u8; proto::ChannelData::wire_len(data.len(), padded)];
    let n = proto::ChannelData::write(&mut buf, channel, data, padded)
        .map_err(|_| ClientError::TooLarge(data.len()))?;
    buf.truncate(n);
    Ok(buf)
}
