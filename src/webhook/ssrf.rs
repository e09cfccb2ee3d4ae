//! SSRF defence for customer-supplied webhook URLs.
//!
//! A webhook URL is chosen by a customer but requested by *our* servers, from inside our network.
//! Without a guard, a customer could point it at `http://127.0.0.1:6379/`, at a neighbouring
//! service on `10.0.0.0/8`, or at the cloud metadata endpoint `http://169.254.169.254/` and make
//! linkhit talk to something that trusts it because of where the request comes from. This module
//! refuses every destination that is not a globally routable unicast address, and it does so twice:
//!
//! 1. **At configuration time, on the URL** ([`check_url`]). The URL is parsed with the WHATWG
//!    parser of the `url` crate, which already folds every exotic IPv4 spelling (`2130706433`,
//!    `0x7f000001`, `0177.0.0.1`, `127.1`, percent-encoded or full-width digits) into one
//!    [`url::Host::Ipv4`], lower-cases and IDNA-maps host names, and separates userinfo from the
//!    host (so `http://good.example@127.0.0.1/` has host `127.0.0.1`). A literal IP host must pass
//!    [`is_public`]; a host name must not be one of the well-known internal names (`localhost`,
//!    `*.local`, `*.internal`, …) and must contain a dot. No DNS lookup happens here: the answer
//!    could change the moment after we looked, so it would prove nothing. This check exists to give
//!    the customer an immediate, understandable error.
//!
//! 2. **At connect time, on every resolved address** ([`GuardedResolver`], plus
//!    [`check_before_send`]). The HTTP client is built with [`GuardedResolver`] as its DNS
//!    resolver; it resolves the host and hands back *only* the public addresses. `reqwest`
//!    connects only to addresses its resolver returned, so the address that was checked is exactly
//!    the address that is connected to. That is what defeats DNS rebinding: an attacker's name
//!    server can answer `93.184.216.34` when the URL is saved and `127.0.0.1` (with TTL 0) when the
//!    webhook fires, but the second answer is filtered out at the only point where it matters. A
//!    check-then-connect design (resolve, check, then let the client resolve again) would leave
//!    that gap open. Literal-IP hosts never reach a DNS resolver, so [`check_before_send`]
//!    re-validates the URL right before each request as well.
//!
//! Requirements on the HTTP client that uses this module (they are outside this file's control):
//! it must be built with `.dns_resolver(Arc::new(GuardedResolver::new(..)))`, it must not use a
//! proxy (`.no_proxy()`, otherwise the proxy resolves the name and the resolver only sees the
//! proxy's host), and it must not follow redirects on its own (`redirect::Policy::none()`, or a
//! custom policy that runs [`check_before_send`] on every hop), because a `302` to
//! `http://127.0.0.1/` is a literal-IP URL that the resolver never sees.
//!
//! `allow_private = true` switches the address and name rules off (for development and tests that
//! post to `127.0.0.1`); the scheme and length rules always apply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// Longest webhook URL accepted, in characters of the input and in bytes of the normalised URL.
const MAX_URL_LEN: usize = 2048;

/// Why a webhook URL (or a resolved address) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SsrfError {
    /// The input is not a URL at all; carries the parser's message.
    #[error("not a valid URL: {0}")]
    Unparsable(String),
    /// The scheme is something other than `http` or `https`.
    #[error("webhook URLs must use http or https")]
    Scheme,
    /// The URL has no host component.
    #[error("the URL has no host")]
    NoHost,
    /// The host is a literal IP address that is not publicly routable; carries the address.
    #[error("{0} is not a public address (LINKHIT_WEBHOOK_ALLOW_PRIVATE=true allows it, for local testing only)")]
    Forbidden(String),
    /// The host is a name reserved for, or only meaningful on, internal networks; carries the name.
    #[error("{0} is an internal host name (LINKHIT_WEBHOOK_ALLOW_PRIVATE=true allows it, for local testing only)")]
    InternalName(String),
    /// The URL is longer than 2048 characters.
    #[error("the URL is longer than 2048 characters")]
    TooLong,
}

/// IPv4 networks that are never a webhook destination, as `(network, prefix length)`.
const FORBIDDEN_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", incl. 0.0.0.0
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // private
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // carrier-grade NAT
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, incl. 169.254.169.254 cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // private
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // documentation TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // private
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, incl. broadcast 255.255.255.255
];

/// IPv6 networks that are never a webhook destination, as `(network, prefix length)`.
///
/// Forms that embed an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are refused as a
/// whole rather than by unpacking the embedded address: no legitimate webhook receiver needs them,
/// and unpacking rules are exactly where guards tend to disagree with the network stack.
const FORBIDDEN_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 96), // IPv4-compatible, incl. :: and ::1
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96), // IPv4-mapped
    (Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96), // IPv4-translated (RFC 2765)
    (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96), // NAT64 well-known prefix
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // NAT64 local-use prefix
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23), // IETF protocol assignments (below)
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 32), // Teredo
    (Ipv6Addr::new(0x2001, 0x2, 0, 0, 0, 0, 0, 0), 48), // benchmarking
    (Ipv6Addr::new(0x2001, 0x10, 0, 0, 0, 0, 0, 0), 28), // ORCHID (deprecated)
    (Ipv6Addr::new(0x2001, 0x20, 0, 0, 0, 0, 0, 0), 28), // ORCHIDv2
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16), // 6to4
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation (RFC 9637)
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique-local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// The only IPv6 block IANA allocates global unicast addresses from (`2000::/3`). Everything
/// outside it is special-purpose or unallocated, so it is refused even if not listed above.
const GLOBAL_UNICAST_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Host-name suffixes (whole labels) that only resolve on internal networks.
const INTERNAL_SUFFIXES: &[&str] = &[
    "localhost",   // RFC 6761 loopback names
    "local",       // mDNS, and Kubernetes' cluster.local
    "internal",    // cloud-internal names, incl. metadata.google.internal
    "home.arpa",   // RFC 8375 home networks
    "lan",         // common router default
    "localdomain", // common /etc/hosts default
    "intranet",    // ICANN-reserved private-use names
    "corp",
    "home",
    "private",
    "svc", // Kubernetes service names (<svc>.<namespace>.svc)
];

fn in_v4_net(ip: Ipv4Addr, (net, prefix): (Ipv4Addr, u8)) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6_net(ip: Ipv6Addr, (net, prefix): (Ipv6Addr, u8)) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// True when `ip` is a globally routable unicast address that a webhook may be sent to.
///
/// Refuses loopback, private, link-local (incl. cloud metadata), CGNAT, multicast, unspecified,
/// broadcast, reserved, documentation and benchmarking ranges, and every IPv6 form that embeds an
/// IPv4 address (mapped, compatible, NAT64, 6to4, Teredo). IPv6 addresses must also lie in the
/// global-unicast block `2000::/3`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !FORBIDDEN_V4.iter().any(|&net| in_v4_net(v4, net)),
        IpAddr::V6(v6) => in_v6_net(v6, GLOBAL_UNICAST_V6) && !FORBIDDEN_V6.iter().any(|&net| in_v6_net(v6, net)),
    }
}

/// True when `host` (already lower-cased by the URL parser) must not be used as a webhook host.
fn is_internal_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    // Single-label names are completed through the resolver's search domains, i.e. to internal
    // hosts; empty labels ("a..b", "x..") are not valid public names either.
    if !name.contains('.') || name.split('.').any(str::is_empty) {
        return true;
    }
    INTERNAL_SUFFIXES
        .iter()
        .any(|suffix| name.strip_suffix(suffix).is_some_and(|rest| rest.is_empty() || rest.ends_with('.')))
}

/// Configuration-time check: parses `raw` and returns the URL if it may be used as a webhook.
///
/// Requires an `http` or `https` scheme, a host, and at most 2048 characters. Unless
/// `allow_private`, a literal IP host must satisfy [`is_public`], and a host name must contain a
/// dot and must not be an internal name (`localhost`, `*.localhost`, `*.local`, `*.internal`,
/// `*.home.arpa`, `*.lan`, …; case-insensitive, one trailing dot ignored). No DNS resolution is
/// done here; resolved addresses are checked by [`GuardedResolver`] at connect time.
pub fn check_url(raw: &str, allow_private: bool) -> Result<Url, SsrfError> {
    // Bounded count: never walks more than MAX_URL_LEN + 1 characters of a huge input.
    if raw.chars().nth(MAX_URL_LEN).is_some() {
        return Err(SsrfError::TooLong);
    }
    let url = Url::parse(raw).map_err(|e| SsrfError::Unparsable(e.to_string()))?;
    check_before_send(&url, allow_private)?;
    Ok(url)
}

/// Connect-time check for a URL about to be requested; the same rules as [`check_url`].
///
/// Call it right before every request (and on every redirect hop): literal-IP hosts never reach
/// [`GuardedResolver`], so this is the only connect-time check they get.
pub fn check_before_send(url: &Url, allow_private: bool) -> Result<(), SsrfError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(SsrfError::Scheme);
    }
    // The normalised form is what is stored and requested; it can be longer than the input
    // (percent-encoding, punycode), and it is pure ASCII, so bytes are characters.
    if url.as_str().len() > MAX_URL_LEN {
        return Err(SsrfError::TooLong);
    }
    let host = url.host().ok_or(SsrfError::NoHost)?;
    if allow_private {
        return Ok(());
    }
    match host {
        Host::Ipv4(v4) if !is_public(IpAddr::V4(v4)) => Err(SsrfError::Forbidden(v4.to_string())),
        Host::Ipv6(v6) if !is_public(IpAddr::V6(v6)) => Err(SsrfError::Forbidden(v6.to_string())),
        Host::Domain(name) if is_internal_name(name) => Err(SsrfError::InternalName(name.to_owned())),
        Host::Ipv4(_) | Host::Ipv6(_) | Host::Domain(_) => Ok(()),
    }
}

/// The error a [`GuardedResolver`] fails with when a host has no public address.
///
/// The message names the host but deliberately not the internal addresses it resolved to, since
/// delivery errors may be shown to the customer who configured the URL.
#[derive(Debug)]
struct NonPublicHost(String);

impl std::fmt::Display for NonPublicHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to a non-public address", self.0)
    }
}

impl std::error::Error for NonPublicHost {}

/// A `reqwest` DNS resolver that returns only public addresses.
///
/// Resolves with [`tokio::net::lookup_host`] and drops every address that fails [`is_public`]
/// (keeps all of them when `allow_private`). If nothing is left, resolution fails with an error
/// saying the host resolves to a non-public address. Because `reqwest` connects only to the
/// addresses its resolver returns, the checked address is the connected address, which closes
/// the DNS-rebinding gap. Install it with `ClientBuilder::dns_resolver`.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl GuardedResolver {
    /// A resolver that filters out non-public addresses unless `allow_private`.
    pub fn new(allow_private: bool) -> Self {
        Self { allow_private }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(resolve_public(name.as_str().to_owned(), self.allow_private))
    }
}

/// Resolves `host` and keeps only the addresses a webhook may connect to.
async fn resolve_public(host: String, allow_private: bool) -> Result<Addrs, Box<dyn std::error::Error + Send + Sync>> {
    // Port 0: reqwest substitutes the URL's port (or the scheme default).
    let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
    let kept: Vec<SocketAddr> = resolved.filter(|addr| allow_private || is_public(addr.ip())).collect();
    if kept.is_empty() {
        return Err(Box::new(NonPublicHost(host)));
    }
    Ok(Box::new(kept.into_iter()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(ip: &str) -> Result<(), SsrfError> {
        Err(SsrfError::Forbidden(ip.to_owned()))
    }

    fn internal(name: &str) -> Result<(), SsrfError> {
        Err(SsrfError::InternalName(name.to_owned()))
    }

    #[test]
    fn check_url_table() {
        let long_ok = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        let too_long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 19));
        let too_long_after_encoding = format!("https://example.com/{}x", " ".repeat(1000));
        assert_eq!(long_ok.len(), MAX_URL_LEN);

        let cases: Vec<(&str, Result<(), SsrfError>)> = vec![
            // ---- accepted: public hosts ----
            ("https://hooks.example.com/x", Ok(())),
            ("http://8.8.8.8/", Ok(())),
            ("https://[2606:4700:4700::1111]/", Ok(())),
            ("https://example.com:8443/path?q=1", Ok(())),
            ("https://1.1.1.1/hook", Ok(())),
            ("http://93.184.216.34/", Ok(())),
            ("https://[2001:4860:4860::8888]:443/", Ok(())),
            ("HTTPS://Hooks.Example.COM/Case", Ok(())),
            ("https://hooks.example.com./fqdn", Ok(())),
            ("https://user:pass@hooks.example.com/x", Ok(())),
            ("http://127.0.0.1@hooks.example.com/", Ok(())),
            ("https://münchen.example/hook", Ok(())),
            ("https://172.32.0.1/", Ok(())),
            ("http://100.128.0.1/", Ok(())),
            ("http://192.169.0.1/", Ok(())),
            ("http://11.0.0.1/", Ok(())),
            ("https://localhost.example.com/", Ok(())),
            // a name is only checked by name here; GuardedResolver refuses its 127.0.0.1 answer
            ("http://127.0.0.1.nip.io/", Ok(())),
            (long_ok.as_str(), Ok(())),
            // ---- 127.0.0.1, every spelling ----
            ("http://127.0.0.1/", forbidden("127.0.0.1")),
            ("http://2130706433/", forbidden("127.0.0.1")),
            ("http://0x7f000001/", forbidden("127.0.0.1")),
            ("http://0X7F000001/", forbidden("127.0.0.1")),
            ("http://017700000001/", forbidden("127.0.0.1")),
            ("http://0177.0.0.1/", forbidden("127.0.0.1")),
            ("http://0x7f.0.0.1/", forbidden("127.0.0.1")),
            ("http://0x7f.1/", forbidden("127.0.0.1")),
            ("http://127.1/", forbidden("127.0.0.1")),
            ("http://127.0.1/", forbidden("127.0.0.1")),
            ("http://127.000.000.001/", forbidden("127.0.0.1")),
            ("http://127.0.0.1./", forbidden("127.0.0.1")),
            ("http://%31%32%37.0.0.1/", forbidden("127.0.0.1")),
            ("http://１２７.０.０.１/", forbidden("127.0.0.1")),
            ("  http://127.0.0.1/  ", forbidden("127.0.0.1")),
            ("http://127.0.0.1:8080/hook", forbidden("127.0.0.1")),
            ("http://127.255.255.254/", forbidden("127.255.255.254")),
            ("http://example.com@127.0.0.1/", forbidden("127.0.0.1")),
            ("http://good.example:pw@127.0.0.1:80/", forbidden("127.0.0.1")),
            ("http://[::ffff:127.0.0.1]/", forbidden("::ffff:127.0.0.1")),
            ("http://[::ffff:7f00:1]/", forbidden("::ffff:127.0.0.1")),
            ("http://[0:0:0:0:0:ffff:127.0.0.1]/", forbidden("::ffff:127.0.0.1")),
            ("http://[::127.0.0.1]/", forbidden("::7f00:1")),
            ("http://[64:ff9b::7f00:1]/", forbidden("64:ff9b::7f00:1")),
            ("http://[2002:7f00:1::]/", forbidden("2002:7f00:1::")),
            // ---- 169.254.169.254 (cloud metadata), every spelling ----
            ("http://169.254.169.254/latest/", forbidden("169.254.169.254")),
            ("http://2852039166/", forbidden("169.254.169.254")),
            ("http://0xa9fea9fe/", forbidden("169.254.169.254")),
            ("http://0251.0376.0251.0376/", forbidden("169.254.169.254")),
            ("http://0xa9.0xfe.0xa9.0xfe/", forbidden("169.254.169.254")),
            ("http://0xa9.254.0251.254/", forbidden("169.254.169.254")),
            ("http://169.254.43518/", forbidden("169.254.169.254")),
            ("http://169.16689662/", forbidden("169.254.169.254")),
            ("http://[::ffff:169.254.169.254]/", forbidden("::ffff:169.254.169.254")),
            ("http://[::ffff:a9fe:a9fe]/", forbidden("::ffff:169.254.169.254")),
            ("http://[64:ff9b::a9fe:a9fe]/", forbidden("64:ff9b::a9fe:a9fe")),
            // ---- other non-public IPv4 ----
            ("http://0.0.0.0/", forbidden("0.0.0.0")),
            ("http://0/", forbidden("0.0.0.0")),
            ("http://10.0.0.1/", forbidden("10.0.0.1")),
            ("http://10.255.255.255/", forbidden("10.255.255.255")),
            ("http://172.16.0.1/", forbidden("172.16.0.1")),
            ("http://172.31.255.254/", forbidden("172.31.255.254")),
            ("http://192.168.1.1/", forbidden("192.168.1.1")),
            ("http://100.64.0.1/", forbidden("100.64.0.1")),
            ("http://100.127.255.254/", forbidden("100.127.255.254")),
            ("http://224.0.0.1/", forbidden("224.0.0.1")),
            ("http://255.255.255.255/", forbidden("255.255.255.255")),
            ("http://240.0.0.1/", forbidden("240.0.0.1")),
            ("http://192.0.2.10/", forbidden("192.0.2.10")),
            ("http://198.18.0.1/", forbidden("198.18.0.1")),
            // ---- other non-public IPv6 ----
            ("http://[::1]/", forbidden("::1")),
            ("http://[0:0:0:0:0:0:0:1]:8080/", forbidden("::1")),
            ("http://[::]/", forbidden("::")),
            ("http://[fc00::1]/", forbidden("fc00::1")),
            ("http://[fd12:3456::1]/", forbidden("fd12:3456::1")),
            ("http://[fe80::1]/", forbidden("fe80::1")),
            ("http://[fec0::1]/", forbidden("fec0::1")),
            ("http://[ff02::1]/", forbidden("ff02::1")),
            ("http://[2001:db8::1]/", forbidden("2001:db8::1")),
            ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", forbidden("2001:0:4136:e378:8000:63bf:3fff:fdd2")),
            ("http://[100::1]/", forbidden("100::1")),
            // ---- internal names ----
            ("http://localhost/", internal("localhost")),
            ("http://LOCALHOST./", internal("localhost.")),
            ("http://localhost:6379/", internal("localhost")),
            ("http://ⓛocalhost/", internal("localhost")),
            ("http://foo.localhost/", internal("foo.localhost")),
            ("http://printer.local/", internal("printer.local")),
            ("http://redis.default.svc.cluster.local/", internal("redis.default.svc.cluster.local")),
            ("http://metadata.google.internal/", internal("metadata.google.internal")),
            ("http://METADATA.GOOGLE.INTERNAL./computeMetadata/v1/", internal("metadata.google.internal.")),
            ("http://router.home.arpa/", internal("router.home.arpa")),
            ("http://nas.lan/", internal("nas.lan")),
            ("http://intranet/", internal("intranet")),
            ("http://metadata/", internal("metadata")),
            ("http://example.com@intranet/", internal("intranet")),
            ("http://localhost../", internal("localhost..")),
            ("http://a..example.com/", internal("a..example.com")),
            // ---- scheme, length, syntax ----
            ("ftp://example.com/", Err(SsrfError::Scheme)),
            ("file:///etc/passwd", Err(SsrfError::Scheme)),
            ("gopher://x", Err(SsrfError::Scheme)),
            ("javascript:alert(1)", Err(SsrfError::Scheme)),
            ("ws://example.com/", Err(SsrfError::Scheme)),
            ("data:text/plain,hi", Err(SsrfError::Scheme)),
            (too_long.as_str(), Err(SsrfError::TooLong)),
            (too_long_after_encoding.as_str(), Err(SsrfError::TooLong)),
        ];

        let accepted = cases.iter().filter(|(_, want)| want.is_ok()).count();
        assert!(accepted >= 10 && cases.len() - accepted >= 30);
        for (raw, want) in &cases {
            let got = check_url(raw, false).map(|_| ());
            assert_eq!(&got, want, "check_url({raw:?}, false)");
            if let Ok(url) = Url::parse(raw) {
                assert_eq!(&check_before_send(&url, false), want, "check_before_send({raw:?})");
            }
        }
    }

    #[test]
    fn unparsable_inputs() {
        for raw in [
            "",
            "not a url",
            "http://",
            "http://[::1/",
            "http://1.2.3.4.5/",
            "http://256.0.0.1/",
            "http://[fe80::1%25eth0]/",
            "//example.com/x",
        ] {
            let got = check_url(raw, false);
            assert!(matches!(got, Err(SsrfError::Unparsable(_))), "check_url({raw:?}) = {got:?}");
        }
    }

    #[test]
    fn allow_private_skips_address_and_name_rules_only() {
        let url = check_url("http://127.0.0.1:8080/hook", true).expect("loopback allowed");
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/hook");
        assert!(check_url("http://localhost/x", true).is_ok());
        assert!(check_url("http://[::1]/x", true).is_ok());
        assert!(check_url("http://intranet/x", true).is_ok());
        assert_eq!(check_url("ftp://127.0.0.1/x", true), Err(SsrfError::Scheme));
        assert_eq!(check_url("ftp://example.com/x", true), Err(SsrfError::Scheme));
        let too_long = format!("http://localhost/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(check_url(&too_long, true), Err(SsrfError::TooLong));
    }

    #[test]
    fn check_url_returns_normalised_url() {
        let url = check_url("HTTPS://Hooks.Example.COM:443/a?b=c", false).expect("public");
        assert_eq!(url.as_str(), "https://hooks.example.com/a?b=c");
    }

    #[test]
    fn is_public_table() {
        let cases: &[(&str, bool)] = &[
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("9.255.255.255", true),
            ("11.0.0.0", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("126.255.255.255", true),
            ("128.0.0.0", true),
            ("169.253.255.255", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("192.167.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450:4001:82a::200e", true),
            ("2001:200::1", true),
            ("0.0.0.0", false),
            ("0.255.255.255", false),
            ("10.0.0.0", false),
            ("100.64.0.0", false),
            ("100.127.255.255", false),
            ("127.0.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.0", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.0.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.251", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
            ("::", false),
            ("::1", false),
            ("::8.8.8.8", false),
            ("::ffff:8.8.8.8", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:0:8.8.8.8", false),
            ("64:ff9b::808:808", false),
            ("64:ff9b:1::1", false),
            ("100::1", false),
            ("2001::1", false),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false),
            ("2001:2::1", false),
            ("2001:10::1", false),
            ("2001:20::1", false),
            ("2001:db8::1", false),
            ("2002:808:808::1", false),
            ("3fff::1", false),
            ("fc00::1", false),
            ("fd00:ec2::254", false),
            ("fe80::1", false),
            ("febf:ffff::1", false),
            ("fec0::1", false),
            ("ff02::1", false),
            ("4000::1", false),
        ];
        for (text, want) in cases {
            let ip: IpAddr = text.parse().expect("test address parses");
            assert_eq!(is_public(ip), *want, "is_public({text})");
        }
    }

    #[test]
    fn internal_name_rules() {
        for name in ["localhost", "localhost.", "a.b.internal", "x.home.arpa.", "svc", "."] {
            assert!(is_internal_name(name), "{name}");
        }
        for name in ["example.com", "example.com.", "notlocal.com", "local.example.com", "lan.io"] {
            assert!(!is_internal_name(name), "{name}");
        }
    }

    #[tokio::test]
    async fn resolver_filters_non_public_addresses() {
        let name: Name = "localhost".parse().expect("valid name");
        let refused = GuardedResolver::new(false).resolve(name).await;
        match refused {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => assert!(e.to_string().contains("non-public address"), "{e}"),
        }

        let name: Name = "localhost".parse().expect("valid name");
        let addrs: Vec<SocketAddr> = match GuardedResolver::new(true).resolve(name).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("localhost did not resolve with allow_private: {e}"),
        };
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn resolver_filters_literal_addresses_too() {
        let name: Name = "169.254.169.254".parse().expect("valid name");
        assert!(GuardedResolver::new(false).resolve(name).await.is_err());
        let name: Name = "8.8.8.8".parse().expect("valid name");
        let addrs: Vec<SocketAddr> = match GuardedResolver::new(false).resolve(name).await {
            Ok(addrs) => addrs.collect(),
            Err(e) => panic!("public literal refused: {e}"),
        };
        assert_eq!(addrs, vec![SocketAddr::from(([8, 8, 8, 8], 0))]);
    }
}
