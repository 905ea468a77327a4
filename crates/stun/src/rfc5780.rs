//! Helpers for RFC 5780 NAT behaviour discovery: Binding requests with CHANGE-REQUEST,
//! RESPONSE-PORT and PADDING, and a typed view of Binding responses with OTHER-ADDRESS,
//! RESPONSE-ORIGIN, MAPPED-ADDRESS and XOR-MAPPED-ADDRESS.

use std::net::SocketAddr;

use crate::credentials::error_code;
use crate::wire::{
    BINDING, CHANGE_IP, CHANGE_PORT, Class, Message, MessageWriter, TransactionId, WireError, attr,
    message_type,
};

/// A Binding request as an RFC 5780 client sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingRequest {
    /// CHANGE-REQUEST "change IP" flag (§7.2).
    pub change_ip: bool,
    /// CHANGE-REQUEST "change port" flag (§7.2).
    pub change_port: bool,
    /// RESPONSE-PORT (§7.5): the server answers to this port at the request's source IP.
    pub response_port: Option<u16>,
    /// PADDING of this many bytes (§7.6).
    pub padding: Option<usize>,
    /// SOFTWARE.
    pub software: Option<String>,
    /// Add FINGERPRINT.
    pub fingerprint: bool,
}

impl BindingRequest {
    /// Encode with transaction ID `id`.
    pub fn encode(&self, id: &TransactionId) -> Result<Vec<u8>, WireError> {
        let padding = self.padding.unwrap_or(0);
        let mut buf = vec![0u8; 128 + padding + self.software.as_ref().map_or(0, String::len)];
        let mut w = MessageWriter::new(&mut buf, message_type(BINDING, Class::Request), id)?;
        if self.change_ip || self.change_port {
            let mut flags = 0;
            if self.change_ip {
                flags |= CHANGE_IP;
            }
            if self.change_port {
                flags |= CHANGE_PORT;
            }
            w.u32_attribute(attr::CHANGE_REQUEST, flags)?;
        }
        if let Some(p) = self.response_port {
            // RESPONSE-PORT: 16-bit port followed by 16 bits of padding.
            let mut v = [0u8; 4];
            v[..2].copy_from_slice(&p.to_be_bytes());
            w.attribute(attr::RESPONSE_PORT, &v)?;
        }
        if let Some(s) = &self.software {
            w.attribute(attr::SOFTWARE, s.as_bytes())?;
        }
        if let Some(n) = self.padding {
            w.padding(n)?;
        }
        if self.fingerprint {
            w.fingerprint()?;
        }
        let n = w.finish();
        buf.truncate(n);
        Ok(buf)
    }
}

/// What a Binding response says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingResponse {
    /// Success or error.
    pub success: bool,
    /// ERROR-CODE and reason phrase of an error response.
    pub error: Option<(u16, String)>,
    /// UNKNOWN-ATTRIBUTES of a 420 response.
    pub unknown_attributes: Vec<u16>,
    /// XOR-MAPPED-ADDRESS.
    pub xor_mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS (RFC 3489 servers send only this; an ALG may rewrite it).
    pub mapped: Option<SocketAddr>,
    /// RESPONSE-ORIGIN: where the server says it sent the response from (§7.3).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS: the server's alternate address and port (§7.4).
    pub other_address: Option<SocketAddr>,
    /// SOFTWARE.
    pub software: Option<String>,
    /// Length of PADDING, if present.
    pub padding: Option<usize>,
    /// FINGERPRINT: `Some(true)` valid, `None` absent. An invalid one fails the parse.
    pub fingerprint: Option<bool>,
}

impl BindingResponse {
    /// Parse a Binding success or error response. Malformed address attributes are an error:
    /// a response we cannot read fully is not trusted partially.
    pub fn parse(bytes: &[u8]) -> Result<BindingResponse, WireError> {
        let m = Message::parse(bytes)?;
        let fingerprint = m.check_fingerprint()?.then_some(true);
        let success = match (m.method(), m.class()) {
            (BINDING, Class::Success) => true,
            (BINDING, Class::Error) => false,
            _ => return Err(WireError::NotStun),
        };
        let addr = |t| m.address(t).transpose();
        let mut unknown_attributes = vec![];
        if let Some(a) = m.get(attr::UNKNOWN_ATTRIBUTES) {
            for c in a.value.chunks_exact(2) {
                unknown_attributes.push(u16::from_be_bytes([c[0], c[1]]));
            }
        }
        Ok(BindingResponse {
            success,
            error: error_code(&m).map(|(c, r)| (c, r.to_owned())),
            unknown_attributes,
            xor_mapped: addr(attr::XOR_MAPPED_ADDRESS)?,
            mapped: addr(attr::MAPPED_ADDRESS)?,
            response_origin: addr(attr::RESPONSE_ORIGIN)?,
            other_address: addr(attr::OTHER_ADDRESS)?,
            software: m
                .get(attr::SOFTWARE)
                .map(|a| String::from_utf8_lossy(a.value).into_owned()),
            padding: m.get(attr::PADDING).map(|a| a.value.len()),
            fingerprint,
        })
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }

    /// MAPPED-ADDRESS and XOR-MAPPED-ADDRESS both present and different: something on the
    /// path (an ALG) rewrote the plain address in the payload (RFC 5780 §4.2... §9.1).
    pub fn alg_rewrote_mapped(&self) -> bool {
        matches!((self.mapped, self.xor_mapped), (Some(m), Some(x)) if m != x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let id = [5u8; 12];
        let req = BindingRequest {
            change_ip: true,
            change_port: true,
            response_port: Some(4242),
            padding: Some(10),
            software: Some("natscope".into()),
            fingerprint: true,
        };
        let bytes = req.encode(&id).unwrap();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.class(), Class::Request);
        assert_eq!(m.method(), BINDING);
        assert_eq!(m.check_fingerprint(), Ok(true));
        assert_eq!(m.get(attr::CHANGE_REQUEST).unwrap().value, [0, 0, 0, 6]);
        assert_eq!(
            m.get(attr::RESPONSE_PORT).unwrap().value,
            [0x10, 0x92, 0, 0]
        );
        assert_eq!(m.get(attr::PADDING).unwrap().value.len(), 10);
        // A plain request is exactly a header.
        assert_eq!(BindingRequest::default().encode(&id).unwrap().len(), 20);
    }
}
