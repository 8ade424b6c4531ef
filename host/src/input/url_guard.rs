//! The address policy for image URLs from untrusted callers: only public addresses, unless a
//! deployment allows more.

use std::net::IpAddr;

/// The address policy for image URLs from untrusted callers (the HTTP service): fetching a URL
/// on a caller's behalf must not reach loopback, private, link-local or cloud-metadata
/// addresses, unless a deployment opens them on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlGuard {
    /// Host names that may resolve to non-public addresses (exact, case-insensitive).
    pub allow_hosts: Vec<String>,
    /// Addresses that may be reached even though they are not public.
    pub allow_ips: Vec<IpAddr>,
}

/// Why [`UrlGuard::check_url`] refused a URL. Each message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlRefused {
    /// Not http or https (`file:`, `ftp:`, ...).
    #[error("scheme {0}: is not allowed; use http or https")]
    Scheme(String),
    /// No host to connect to.
    #[error("the URL has no host")]
    NoHost,
    /// A literal address that is not public and not allowed by the deployment.
    #[error("{0} is not a public address: imbed does not fetch from loopback, private, link-local or metadata addresses for callers (list it in [server] url_allow to open it)")]
    NotPublic(IpAddr),
}

impl UrlGuard {
    fn allowed(&self, host: &str, ip: IpAddr) -> bool {
        is_public(ip)
            || self.allow_ips.contains(&ip)
            || self
                .allow_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Check a URL before a request or a redirect: http(s) only, and a literal IP must be
    /// allowed (host names are checked when they resolve, on the address then connected to).
    pub fn check_url(&self, url: &url::Url) -> Result<(), UrlRefused> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlRefused::Scheme(url.scheme().to_string()));
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => IpAddr::V4(v4),
            Some(url::Host::Ipv6(v6)) => IpAddr::V6(v6),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(UrlRefused::NoHost),
        };
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_matches(|c| c == '[' || c == ']');
        if self.allowed(host, ip) {
            Ok(())
        } else {
            Err(UrlRefused::NotPublic(ip))
        }
    }

    /// An HTTP client that enforces this guard: every name is resolved by the guard, which
    /// drops non-public addresses, and reqwest connects to exactly the addresses it returns, so
    /// a DNS answer that changes between check and use (rebinding) cannot slip through.
    /// Redirects are checked hop by hop; proxies are not used (they would resolve for us).
    pub fn client(&self, user_agent: &str) -> reqwest::Result<reqwest::Client> {
        let guard = std::sync::Arc::new(self.clone());
        let redirect_guard = guard.clone();
        reqwest::Client::builder()
            .no_proxy()
            .user_agent(user_agent)
            .dns_resolver(std::sync::Arc::new(GuardedResolver { guard }))
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 {
                    return attempt.error("more than 5 redirects");
                }
                match redirect_guard.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => {
                        let to = attempt.url().to_string();
                        attempt.error(format!("redirect to {to} refused: {e}"))
                    }
                }
            }))
            .build()
    }
}

/// Whether an address is on the public internet (not loopback, private, link-local, shared,
/// multicast, documentation or otherwise special).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local() // includes 169.254.169.254, the metadata address
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7 (includes fd00:ec2::254)
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64: may embed a private IPv4
                || (s[0] == 0x2001 && s[1] == 0x0db8)) // documentation
        }
    }
}

struct GuardedResolver {
    guard: std::sync::Arc<UrlGuard>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<std::net::SocketAddr> = addrs
                .iter()
                .copied()
                .filter(|a| guard.allowed(&host, a.ip()))
                .collect();
            if allowed.is_empty() {
                let seen: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
                return Err(format!(
                    "{host} resolves to {} only, which is not public: imbed does not fetch from loopback, private, link-local or metadata addresses for callers",
                    seen.join(", ")
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_pass_the_guard() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        let guard = UrlGuard::default();
        let check = |u: &str| guard.check_url(&url::Url::parse(u).unwrap());
        assert_eq!(
            check("http://127.0.0.1/x.png"),
            Err(UrlRefused::NotPublic("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            check("http://[::1]:8080/x.png"),
            Err(UrlRefused::NotPublic("::1".parse().unwrap()))
        );
        assert_eq!(
            check("file:///etc/passwd"),
            Err(UrlRefused::Scheme("file".into()))
        );
        assert!(check("file:///etc/passwd")
            .unwrap_err()
            .to_string()
            .contains("use http or https"));
        assert!(check("https://example.com/x.png").is_ok());
        let open = UrlGuard {
            allow_ips: vec!["127.0.0.1".parse().unwrap()],
            ..UrlGuard::default()
        };
        assert!(open
            .check_url(&url::Url::parse("http://127.0.0.1/x.png").unwrap())
            .is_ok());
    }
}
