//! ICE attributes in SDP syntax (RFC 8839 §5): `a=candidate`, `a=ice-ufrag`, `a=ice-pwd`,
//! `a=ice-options`, `a=ice-lite`, `a=end-of-candidates`.
//!
//! [`Description`] is the ICE part of an offer or answer. [`parse_line`] reads one attribute
//! line (for trickle, RFC 8840 style); [`Description::parse`] a whole fragment; lines that are
//! not ICE attributes (`v=`, `m=`, `a=mid`...) are skipped, so a browser's full SDP also parses.
//! Input is untrusted: nothing here panics, every error says what was wrong.

use crate::candidate::Candidate;

/// Why an attribute was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// A required field is absent.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A field does not follow the grammar.
    #[error("invalid {0}: {1:?}")]
    Invalid(&'static str, String),
    /// A well-formed value we do not implement (transport other than UDP/TCP, unknown type).
    #[error("unsupported {0}: {1:?}")]
    Unsupported(&'static str, String),
    /// The connection address is a host name (an mDNS `.local` name or an FQDN); resolve it
    /// and build the candidate with the address.
    #[error("connection address is a host name: {0:?}")]
    Hostname(String),
    /// The input is too large to be a legitimate ICE description.
    #[error("input too large")]
    TooLarge,
}

/// `ice-char = ALPHA / DIGIT / "+" / "/"` (RFC 8839 §5.4).
pub const fn is_ice_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// Check an `ice-ufrag` value: 4 to 256 ice-chars (RFC 8839 §5.4).
pub fn check_ufrag(s: &str) -> Result<(), SdpError> {
    if (4..=256).contains(&s.len()) && s.bytes().all(is_ice_char) {
        Ok(())
    } else {
        Err(SdpError::Invalid("ice-ufrag", truncate(s)))
    }
}

/// Check an `ice-pwd` value: 22 to 256 ice-chars (RFC 8839 §5.4).
pub fn check_pwd(s: &str) -> Result<(), SdpError> {
    if (22..=256).contains(&s.len()) && s.bytes().all(is_ice_char) {
        Ok(())
    } else {
        // Never echo a password into an error message.
        Err(SdpError::Invalid("ice-pwd", format!("<{} bytes>", s.len())))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// One ICE attribute line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `a=ice-ufrag:`
    Ufrag(String),
    /// `a=ice-pwd:`
    Pwd(String),
    /// `a=ice-options:` tokens (`trickle`, `ice2`...).
    Options(Vec<String>),
    /// `a=ice-lite`
    Lite,
    /// `a=candidate:`
    Candidate(Candidate),
    /// `a=end-of-candidates`
    EndOfCandidates,
}

/// Longest line accepted: a candidate line with every extension is a few hundred bytes.
pub const MAX_LINE: usize = 4096;

/// Parse one line. `Ok(None)` for lines that are not ICE attributes (other SDP lines, blank).
pub fn parse_line(line: &str) -> Result<Option<Attribute>, SdpError> {
    if line.len() > MAX_LINE {
        return Err(SdpError::TooLarge);
    }
    let l = line.trim();
    let l = l.strip_prefix("a=").unwrap_or(l);
    if let Some(v) = l.strip_prefix("ice-ufrag:") {
        check_ufrag(v.trim())?;
        return Ok(Some(Attribute::Ufrag(v.trim().to_owned())));
    }
    if let Some(v) = l.strip_prefix("ice-pwd:") {
        check_pwd(v.trim())?;
        return Ok(Some(Attribute::Pwd(v.trim().to_owned())));
    }
    if let Some(v) = l.strip_prefix("ice-options:") {
        let opts: Vec<String> = v.split_ascii_whitespace().map(str::to_owned).collect();
        if opts.is_empty() || opts.len() > 16 {
            return Err(SdpError::Invalid("ice-options", truncate(v)));
        }
        if let Some(bad) = opts.iter().find(|o| !o.bytes().all(is_ice_char_or_dash)) {
            return Err(SdpError::Invalid("ice-options", truncate(bad)));
        }
        return Ok(Some(Attribute::Options(opts)));
    }
    if l == "ice-lite" {
        return Ok(Some(Attribute::Lite));
    }
    if l == "end-of-candidates" {
        return Ok(Some(Attribute::EndOfCandidates));
    }
    if l.starts_with("candidate:") {
        return Candidate::parse(l).map(|c| Some(Attribute::Candidate(c)));
    }
    Ok(None)
}

fn is_ice_char_or_dash(b: u8) -> bool {
    // ice-option-tag = 1*ice-char per RFC 8839, but deployed tags contain '-' (e.g.
    // "renomination" is fine, "google-ice" has a dash): accept it.
    is_ice_char(b) || b == b'-' || b == b'.' || b == b'_'
}

impl Attribute {
    /// The line, with `a=`.
    pub fn to_line(&self) -> String {
        match self {
            Attribute::Ufrag(u) => format!("a=ice-ufrag:{u}"),
            Attribute::Pwd(p) => format!("a=ice-pwd:{p}"),
            Attribute::Options(o) => format!("a=ice-options:{}", o.join(" ")),
            Attribute::Lite => "a=ice-lite".to_owned(),
            Attribute::Candidate(c) => format!("a={c}"),
            Attribute::EndOfCandidates => "a=end-of-candidates".to_owned(),
        }
    }
}

/// The ICE part of an offer or answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description {
    /// Username fragment.
    pub ufrag: String,
    /// Password.
    pub pwd: String,
    /// `ice-options` tokens.
    pub options: Vec<String>,
    /// The peer is an ICE-lite implementation.
    pub lite: bool,
    /// Candidates, in order.
    pub candidates: Vec<Candidate>,
    /// `a=end-of-candidates` was present.
    pub end_of_candidates: bool,
}

/// Most candidates accepted in one description.
pub const MAX_CANDIDATES: usize = 256;

impl Description {
    /// Parse a fragment (any line ending). Candidates with host names are skipped (they need
    /// resolving, which is the caller's business); every other error fails the parse.
    pub fn parse(text: &str) -> Result<Description, SdpError> {
        if text.len() > MAX_LINE * MAX_CANDIDATES {
            return Err(SdpError::TooLarge);
        }
        let mut d = Description::default();
        let (mut ufrag, mut pwd) = (None, None);
        for line in text.lines() {
            match parse_line(line) {
                Ok(Some(Attribute::Ufrag(u))) => ufrag = Some(u),
                Ok(Some(Attribute::Pwd(p))) => pwd = Some(p),
                Ok(Some(Attribute::Options(o))) => d.options.extend(o),
                Ok(Some(Attribute::Lite)) => d.lite = true,
                Ok(Some(Attribute::Candidate(c))) => {
                    if d.candidates.len() >= MAX_CANDIDATES {
                        return Err(SdpError::TooLarge);
                    }
                    d.candidates.push(c);
                }
                Ok(Some(Attribute::EndOfCandidates)) => d.end_of_candidates = true,
                Ok(None) | Err(SdpError::Hostname(_)) => {}
                Err(e) => return Err(e),
            }
        }
        d.ufrag = ufrag.ok_or(SdpError::Missing("a=ice-ufrag"))?;
        d.pwd = pwd.ok_or(SdpError::Missing("a=ice-pwd"))?;
        Ok(d)
    }

    /// True when the peer announced trickle ICE (`a=ice-options:trickle`, RFC 8840 §4.1.1).
    pub fn trickle(&self) -> bool {
        self.options.iter().any(|o| o == "trickle")
    }

    /// The attribute lines, in a stable order: ufrag, pwd, options, lite, candidates, end.
    pub fn to_lines(&self) -> Vec<String> {
        let mut v = vec![
            Attribute::Ufrag(self.ufrag.clone()).to_line(),
            Attribute::Pwd(self.pwd.clone()).to_line(),
        ];
        if !self.options.is_empty() {
            v.push(Attribute::Options(self.options.clone()).to_line());
        }
        if self.lite {
            v.push(Attribute::Lite.to_line());
        }
        v.extend(self.candidates.iter().map(|c| format!("a={c}")));
        if self.end_of_candidates {
            v.push(Attribute::EndOfCandidates.to_line());
        }
        v
    }

    /// The fragment as text, CRLF-terminated lines as in SDP.
    pub fn to_sdp(&self) -> String {
        let mut s = String::new();
        for l in self.to_lines() {
            s.push_str(&l);
            s.push_str("\r\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::CandidateKind;

    const CHROME: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
a=candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 network-id 1\r\n\
a=candidate:1 1 udp 2122260223 3d1e7a1f-2b8b-4b9e-8f5e-6f1b0d7e8a9c.local 46243 typ host generation 0\r\n\
a=candidate:435653019 1 tcp 1845501695 192.168.0.196 0 typ host tcptype active generation 0\r\n\
a=candidate:2 1 udp 1686052607 203.0.113.9 46243 typ srflx raddr 192.168.0.196 rport 46243 generation 0\r\n\
a=ice-ufrag:Oyef\r\na=ice-pwd:7QgbEgnPn9I1cvWSxp7zZYg5\r\na=ice-options:trickle\r\n\
a=fingerprint:sha-256 00:11\r\na=end-of-candidates\r\n";

    #[test]
    fn parses_a_browser_offer() {
        let d = Description::parse(CHROME).unwrap();
        assert_eq!(d.ufrag, "Oyef");
        assert_eq!(d.pwd, "7QgbEgnPn9I1cvWSxp7zZYg5");
        assert!(d.trickle());
        assert!(d.end_of_candidates);
        // The mDNS candidate is skipped, the TCP one kept (and later ignored by the agent).
        assert_eq!(d.candidates.len(), 3);
        assert_eq!(d.candidates[2].kind, CandidateKind::ServerReflexive);
    }

    #[test]
    fn roundtrip() {
        let d = Description::parse(CHROME).unwrap();
        let again = Description::parse(&d.to_sdp()).unwrap();
        assert_eq!(d, again);
        assert!(d.to_lines()[0].starts_with("a=ice-ufrag:"));
    }

    #[test]
    fn credentials_grammar_rfc8839_5_4() {
        assert!(check_ufrag("abc").is_err());
        assert!(check_ufrag("ab+/").is_ok());
        assert!(check_ufrag("ab c").is_err());
        assert!(check_pwd("0123456789012345678901").is_ok());
        assert!(check_pwd("012345678901234567890").is_err());
        let e = check_pwd("secret-password-here!!!").unwrap_err();
        assert!(!e.to_string().contains("secret"));
        assert!(Description::parse("a=ice-ufrag:abcd\n").is_err());
    }

    #[test]
    fn lines() {
        assert_eq!(parse_line("m=audio 9").unwrap(), None);
        assert_eq!(
            parse_line("a=end-of-candidates").unwrap(),
            Some(Attribute::EndOfCandidates)
        );
        assert_eq!(parse_line("a=ice-lite").unwrap(), Some(Attribute::Lite));
        assert_eq!(
            parse_line("a=ice-options:trickle ice2").unwrap(),
            Some(Attribute::Options(vec!["trickle".into(), "ice2".into()]))
        );
        assert!(parse_line("a=ice-options:").is_err());
        assert_eq!(
            parse_line(&"x".repeat(MAX_LINE + 1)),
            Err(SdpError::TooLarge)
        );
    }
}
