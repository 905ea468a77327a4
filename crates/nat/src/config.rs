//! NAT configuration: behaviours in RFC 4787 / RFC 5382 terms, presets, validation.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Mapping or filtering behaviour (RFC 4787 §4.1 mapping, §5 filtering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behavior {
    /// Mapping: one external endpoint per internal endpoint, whatever the destination.
    /// Filtering: anyone may send to a live mapping.
    EndpointIndependent,
    /// Mapping: one external endpoint per (internal endpoint, remote IP).
    /// Filtering: only remote IPs the mapping has sent to.
    AddressDependent,
    /// Mapping: one external endpoint per (internal endpoint, remote IP, remote port).
    /// Filtering: only remote endpoints (IP and port) the mapping has sent to.
    AddressAndPortDependent,
}

impl Behavior {
    /// The RFC 4787 term: `endpoint-independent`, `address-dependent`,
    /// `address-and-port-dependent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::EndpointIndependent => "endpoint-independent",
            Behavior::AddressDependent => "address-dependent",
            Behavior::AddressAndPortDependent => "address-and-port-dependent",
        }
    }

    /// All three, in RFC order.
    pub const ALL: [Behavior; 3] = [
        Behavior::EndpointIndependent,
        Behavior::AddressDependent,
        Behavior::AddressAndPortDependent,
    ];
}

/// How external ports are chosen (RFC 4787 §4.2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PortAssignment {
    /// Keep the internal port when it is free and in range; otherwise fall back to `Random`.
    Preserve,
    /// The next free port after the previously assigned one (per protocol and external IP).
    Sequential,
    /// A uniformly random free port (seeded RNG).
    Random,
}

/// How external IPs are chosen when there are several (RFC 4787 §4.1, REQ-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// Every mapping of one internal IP uses the same external IP (REQ-2 recommends this).
    Paired,
    /// Each mapping may get any external IP.
    Arbitrary,
}

/// What the box does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Address and port translation (NAPT).
    Nat,
    /// No translation; inbound is filtered per `filtering` against what the inside sent.
    Firewall,
    /// Every UDP packet is dropped in both directions; TCP and ICMP are handled as by
    /// `Firewall`.
    UdpBlocked,
}

/// TCP idle timeouts (RFC 5382 REQ-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpTimeouts {
    /// Established connections: at least 2 h 4 min.
    pub established: Duration,
    /// Partially open, closed (FIN both ways) or reset connections: at least 4 min.
    pub transitory: Duration,
}

impl Default for TcpTimeouts {
    fn default() -> Self {
        TcpTimeouts {
            established: Duration::from_secs(2 * 3600 + 4 * 60),
            transitory: Duration::from_secs(4 * 60),
        }
    }
}

/// A NAT's configuration. `Default` is EIM + APDF, port preservation, hairpinning on, one
/// external address (192.0.2.1), RFC timeouts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatConfig {
    /// NAT, firewall or UDP-blocking firewall.
    pub mode: Mode,
    /// Mapping behaviour (RFC 4787 §4.1). Ignored outside `Mode::Nat`.
    pub mapping: Behavior,
    /// Filtering behaviour (RFC 4787 §5).
    pub filtering: Behavior,
    /// Port assignment (RFC 4787 §4.2.1).
    pub port_assignment: PortAssignment,
    /// Keep the parity of the internal port (RFC 4787 REQ-4).
    pub port_parity: bool,
    /// External ports, inclusive, for every internal source port (well-known ones too: the
    /// 0-1023 / 1024-65535 split of RFC 4787 REQ-3 a is not modelled).
    pub port_range: (u16, u16),
    /// External addresses (at least one in `Mode::Nat`; unused otherwise).
    pub external: Vec<Ipv4Addr>,
    /// How external addresses are shared between internal hosts.
    pub pooling: Pooling,
    /// UDP mapping timeout (RFC 4787 REQ-5: at least 2 min; shorter values are accepted for
    /// tests).
    pub udp_timeout: Duration,
    /// Inbound packets refresh the mapping (RFC 4787 REQ-6 leaves this open).
    pub inbound_refresh: bool,
    /// Hairpinning (RFC 4787 REQ-9): the hairpinned packet carries the sender's external
    /// endpoint as its source.
    pub hairpinning: bool,
    /// TCP timeouts (RFC 5382 REQ-5).
    pub tcp: TcpTimeouts,
    /// At most this many mappings; new flows beyond are dropped (`DropReason::TableFull`).
    pub max_mappings: usize,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            mode: Mode::Nat,
            mapping: Behavior::EndpointIndependent,
            filtering: Behavior::AddressAndPortDependent,
            port_assignment: PortAssignment::Preserve,
            port_parity: false,
            port_range: (1024, 65535),
            external: vec![Ipv4Addr::new(192, 0, 2, 1)],
            pooling: Pooling::Paired,
            udp_timeout: Duration::from_secs(120),
            inbound_refresh: true,
            hairpinning: true,
            tcp: TcpTimeouts::default(),
            max_mappings: 65536,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `Mode::Nat` without external addresses.
    #[error("a NAT needs at least one external address")]
    NoExternalAddress,
    /// The same external address twice.
    #[error("external address {0} is listed twice")]
    DuplicateExternal(Ipv4Addr),
    /// `port_range` empty, starting at 0, or (with parity) without both parities.
    #[error("bad port range {0}-{1}: {2}")]
    BadPortRange(u16, u16, &'static str),
    /// A zero timeout.
    #[error("timeout `{0}` must be greater than zero")]
    ZeroTimeout(&'static str),
    /// A timeout longer than [`NatConfig::MAX_TIMEOUT`].
    #[error("timeout `{0}` must be at most 7 days")]
    TimeoutTooLong(&'static str),
    /// `max_mappings` is zero.
    #[error("max_mappings must be at least 1")]
    NoMappings,
}

/// Preset names accepted by [`NatConfig::preset`].
const PRESET_NAMES: &[&str] = &[
    "full-cone",
    "restricted-cone",
    "port-restricted-cone",
    "symmetric",
    "symmetric-random",
    "cgnat",
    "firewall",
    "firewall-open",
    "udp-blocked",
    "eim-eif",
    "eim-adf",
    "eim-apdf",
    "adm-eif",
    "adm-adf",
    "adm-apdf",
    "apdm-eif",
    "apdm-adf",
    "apdm-apdf",
];

impl NatConfig {
    /// Names [`NatConfig::preset`] knows.
    pub const PRESETS: &'static [&'static str] = PRESET_NAMES;

    /// The longest timeout [`NatConfig::validate`] accepts: 7 days, far beyond any RFC
    /// minimum (2 h 4 min for established TCP), and small enough that `now + timeout` never
    /// overflows an `Instant`.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A named configuration with the given external addresses (ignored by firewalls).
    ///
    /// - `full-cone` EIM/EIF, `restricted-cone` EIM/ADF, `port-restricted-cone` EIM/APDF
    ///   (port preservation, hairpinning on);
    /// - `symmetric` APDM/APDF with sequential ports, `symmetric-random` with random ports;
    /// - `cgnat`: EIM/APDF, random ports, paired pooling, hairpinning on. RFC 6888 REQ-1
    ///   requires RFC 4787 compliance, which asks for EIM (REQ-1) and leaves filtering
    ///   between EIF and APDF; deployed CGNs mostly filter APDF, so that is what this preset
    ///   does. Paired pooling follows RFC 4787 REQ-2, hairpinning RFC 6888 REQ-7 / RFC 4787
    ///   REQ-9, random ports RFC 6056 / RFC 6888 §5;
    /// - `firewall`: no translation, APDF; `firewall-open`: no translation, EIF;
    ///   `udp-blocked`: UDP dropped, TCP and ICMP through an APDF firewall;
    /// - the nine `<mapping>-<filtering>` combinations with `eim`, `adm`, `apdm` and
    ///   `eif`, `adf`, `apdf`.
    pub fn preset(name: &str, external: Vec<Ipv4Addr>) -> Option<NatConfig> {
        use Behavior::EndpointIndependent as Ei;
        use Behavior::{AddressAndPortDependent as Apd, AddressDependent as Ad};
        let base = NatConfig {
            external,
            ..NatConfig::default()
        };
        let with = |mapping, filtering| NatConfig {
            mapping,
            filtering,
            ..base.clone()
        };
        let config = match name {
            "full-cone" => with(Ei, Ei),
            "restricted-cone" => with(Ei, Ad),
            "port-restricted-cone" => with(Ei, Apd),
            "symmetric" => NatConfig {
                port_assignment: PortAssignment::Sequential,
                ..with(Apd, Apd)
            },
            "symmetric-random" => NatConfig {
                port_assignment: PortAssignment::Random,
                ..with(Apd, Apd)
            },
            "cgnat" => NatConfig {
                port_assignment: PortAssignment::Random,
                pooling: Pooling::Paired,
                ..with(Ei, Apd)
            },
            "firewall" => NatConfig {
                mode: Mode::Firewall,
                ..with(Ei, Apd)
            },
            "firewall-open" => NatConfig {
                mode: Mode::Firewall,
                ..with(Ei, Ei)
            },
            "udp-blocked" => NatConfig {
                mode: Mode::UdpBlocked,
                ..with(Ei, Apd)
            },
            _ => {
                let (m, f) = name.split_once('-')?;
                let mapping = match m {
                    "eim" => Ei,
                    "adm" => Ad,
                    "apdm" => Apd,
                    _ => return None,
                };
                let filtering = match f {
                    "eif" => Ei,
                    "adf" => Ad,
                    "apdf" => Apd,
                    _ => return None,
                };
                with(mapping, filtering)
            }
        };
        Some(config)
    }

    /// Check the configuration for values the NAT cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == Mode::Nat {
            if self.external.is_empty() {
                return Err(ConfigError::NoExternalAddress);
            }
            for (i, ip) in self.external.iter().enumerate() {
                if self.external[..i].contains(ip) {
                    return Err(ConfigError::DuplicateExternal(*ip));
                }
            }
        }
        let (lo, hi) = self.port_range;
        if lo == 0 {
            return Err(ConfigError::BadPortRange(lo, hi, "port 0 is not a port"));
        }
        if lo > hi {
            return Err(ConfigError::BadPortRange(lo, hi, "empty"));
        }
        if self.port_parity && lo == hi {
            return Err(ConfigError::BadPortRange(
                lo,
                hi,
                "port parity needs both an even and an odd port",
            ));
        }
        for (name, t) in [
            ("udp_timeout", self.udp_timeout),
            ("tcp.established", self.tcp.established),
            ("tcp.transitory", self.tcp.transitory),
        ] {
            if t.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
            if t > Self::MAX_TIMEOUT {
                return Err(ConfigError::TimeoutTooLong(name));
            }
        }
        if self.max_mappings == 0 {
            return Err(ConfigError::NoMappings);
        }
        Ok(())
    }

    /// The RFC 3489 name this configuration would be given (a secondary label only):
    /// `full-cone`, `restricted-cone`, `port-restricted-cone`, `symmetric` (any
    /// endpoint-dependent mapping), `open-internet` and `symmetric-udp-firewall` (firewalls),
    /// `udp-blocked`. Same derivation as natprobe's report.
    pub fn legacy_label(&self) -> &'static str {
        use Behavior::*;
        match (self.mode, self.mapping, self.filtering) {
            (Mode::UdpBlocked, _, _) => "udp-blocked",
            (Mode::Firewall, _, EndpointIndependent) => "open-internet",
            (Mode::Firewall, _, _) => "symmetric-udp-firewall",
            (Mode::Nat, AddressDependent | AddressAndPortDependent, _) => "symmetric",
            (Mode::Nat, EndpointIndependent, EndpointIndependent) => "full-cone",
            (Mode::Nat, EndpointIndependent, AddressDependent) => "restricted-cone",
            (Mode::Nat, EndpointIndependent, AddressAndPortDependent) => "port-restricted-cone",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext() -> Vec<Ipv4Addr> {
        vec![Ipv4Addr::new(203, 0, 113, 1)]
    }

    #[test]
    fn every_preset_is_valid_and_named_presets_exist() {
        for name in NatConfig::PRESETS {
            let c = NatConfig::preset(name, ext()).unwrap();
            c.validate().unwrap();
        }
        assert!(NatConfig::preset("nope", ext()).is_none());
        assert!(NatConfig::preset("eim-xyz", ext()).is_none());
        assert_eq!(NatConfig::PRESETS.len(), 18);
    }

    #[test]
    fn legacy_labels_follow_rfc3489_names() {
        let label = |n: &str| NatConfig::preset(n, ext()).unwrap().legacy_label();
        assert_eq!(label("full-cone"), "full-cone");
        assert_eq!(label("eim-adf"), "restricted-cone");
        assert_eq!(label("cgnat"), "port-restricted-cone");
        assert_eq!(label("adm-eif"), "symmetric");
        assert_eq!(label("symmetric-random"), "symmetric");
        assert_eq!(label("firewall"), "symmetric-udp-firewall");
        assert_eq!(label("firewall-open"), "open-internet");
        assert_eq!(label("udp-blocked"), "udp-blocked");
    }

    #[test]
    fn nine_combinations_map_to_behaviours() {
        let names = ["eim", "adm", "apdm"];
        let filters = ["eif", "adf", "apdf"];
        for (i, m) in names.iter().enumerate() {
            for (j, f) in filters.iter().enumerate() {
                let c = NatConfig::preset(&format!("{m}-{f}"), ext()).unwrap();
                assert_eq!(c.mapping, Behavior::ALL[i]);
                assert_eq!(c.filtering, Behavior::ALL[j]);
                assert_eq!(c.mode, Mode::Nat);
            }
        }
    }

    #[test]
    fn validation_rejects_unusable_configs() {
        let ok = NatConfig::default();
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut NatConfig)| {
            let mut c = NatConfig::default();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(&|c| c.external.clear()), ConfigError::NoExternalAddress);
        assert!(matches!(
            bad(&|c| c.external = vec![Ipv4Addr::LOCALHOST; 2]),
            ConfigError::DuplicateExternal(_)
        ));
        assert!(matches!(
            bad(&|c| c.port_range = (0, 10)),
            ConfigError::BadPortRange(..)
        ));
        assert!(matches!(
            bad(&|c| c.port_range = (10, 9)),
            ConfigError::BadPortRange(..)
        ));
        assert!(matches!(
            bad(&|c| {
                c.port_parity = true;
                c.port_range = (7, 7)
            }),
            ConfigError::BadPortRange(..)
        ));
        assert_eq!(
            bad(&|c| c.udp_timeout = Duration::ZERO),
            ConfigError::ZeroTimeout("udp_timeout")
        );
        assert_eq!(bad(&|c| c.max_mappings = 0), ConfigError::NoMappings);
        // A firewall needs no external address.
        let fw = NatConfig {
            mode: Mode::Firewall,
            external: vec![],
            ..NatConfig::default()
        };
        fw.validate().unwrap();
    }

    /// Timeouts are bounded (at most `NatConfig::MAX_TIMEOUT`, 7 days) so that `now + timeout`
    /// can never overflow an `Instant`.
    #[test]
    fn validation_bounds_timeouts() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(NatConfig::MAX_TIMEOUT, week);
        type Set = fn(&mut NatConfig, Duration);
        let fields: [(&str, Set); 3] = [
            ("udp_timeout", |c, d| c.udp_timeout = d),
            ("tcp.established", |c, d| c.tcp.established = d),
            ("tcp.transitory", |c, d| c.tcp.transitory = d),
        ];
        for (name, set) in fields {
            for d in [Duration::MAX, week + Duration::from_nanos(1)] {
                let mut c = NatConfig::default();
                set(&mut c, d);
                assert_eq!(
                    c.validate(),
                    Err(ConfigError::TimeoutTooLong(name)),
                    "{name}"
                );
            }
            let mut c = NatConfig::default();
            set(&mut c, week);
            c.validate().unwrap();
        }
        assert!(
            ConfigError::TimeoutTooLong("udp_timeout")
                .to_string()
                .contains("7 days")
        );
    }

    #[test]
    fn serde_uses_rfc_vocabulary() {
        let c = NatConfig::preset("adm-apdf", ext()).unwrap();
        let s = serde_json::to_string(&c).unwrap();
        assert!(s.contains(r#""mapping":"address-dependent""#), "{s}");
        assert!(
            s.contains(r#""filtering":"address-and-port-dependent""#),
            "{s}"
        );
        assert!(s.contains(r#""mode":"nat""#), "{s}");
        let back: NatConfig = serde_json::from_str(&s).unwrap();
        assert_eq!(back, c);
        for b in Behavior::ALL {
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.as_str())
            );
        }
        // Missing keys take the defaults.
        let partial: NatConfig =
            serde_json::from_str(r#"{"filtering":"endpoint-independent"}"#).unwrap();
        assert_eq!(partial.filtering, Behavior::EndpointIndependent);
        assert_eq!(partial.mapping, Behavior::EndpointIndependent);
    }
}
