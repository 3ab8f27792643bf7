//! Which browser origins may use the API. A request without `Origin` is not from a browser page
//! and passes (it still needs its credential). A page's origin passes when it is listed in
//! `allowed_origins` (scheme, host and port; `"*"` = any) or when it is the server's own origin
//! *as this connection proves it*: the connection's scheme, the port it arrived on, and a host
//! that is a loopback name or the IP address it arrived at. The `Host` header is not trusted:
//! under DNS rebinding an attacker's page has `Host` and `Origin` both `evil.example:8080` while
//! the browser talks to this server. A deployment reached by a name (behind a proxy, or on a LAN
//! name) lists that origin. Cross-origin HTTP (CORS) is answered for listed origins only, on the
//! endpoints a page calls: [`cors`].

use std::net::{IpAddr, SocketAddr};

use actix_web::http::header;
use actix_web::HttpRequest;

/// The local address and scheme of a connection, stored by the server's `on_connect`.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub local: SocketAddr,
    pub tls: bool,
}

/// An origin's scheme, host (lowercase; IPv6 without brackets) and port (the scheme's default
/// when absent); `None` when it is not `http(s)://host[:port]`.
pub fn parse(origin: &str) -> Option<(&'static str, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let (scheme, default) = match scheme.to_ascii_lowercase().as_str() {
        "http" => ("http", 80),
        "https" => ("https", 443),
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default,
            None => return None,
        };
        (h.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().ok()?),
            None => (rest.to_string(), default),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether `origin` is listed in `allowed` (compared as scheme, host and port).
pub fn listed(origin: &str, allowed: &[String]) -> bool {
    let Some(o) = parse(origin) else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a == "*" || parse(a).is_some_and(|a| a == o))
}

/// Whether `origin` is the server's own as the connection `conn` proves it (see the module doc).
pub fn own(origin: &str, conn: Conn) -> bool {
    let Some((scheme, host, port)) = parse(origin) else {
        return false;
    };
    if scheme != if conn.tls { "https" } else { "http" } || port != conn.local.port() {
        return false;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => ip == conn.local.ip() || ip.is_loopback(),
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// Whether the request may proceed as far as its Origin goes: no Origin, a listed one, or the
/// server's own.
pub fn allowed(req: &HttpRequest, allowed: &[String]) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if listed(origin, allowed) {
        return true;
    }
    // Without the connection's facts (in-process tests) only listed origins pass.
    req.conn_data::<Conn>().is_some_and(|c| own(origin, *c))
}

/// [`allowed`], or the refusal (counted as rejected `origin`): `what` may not be opened from
/// this page.
pub fn require(
    req: &HttpRequest,
    allowed_origins: &[String],
    metrics: &crate::metrics::Metrics,
    what: &str,
) -> Result<(), super::ApiError> {
    if allowed(req, allowed_origins) {
        return Ok(());
    }
    metrics.reject("origin", 1);
    Err(super::ApiError::new(
        crate::event::Code::OriginNotAllowed,
        format!("this Origin may not open {what} (see allowed_origins)"),
    ))
}

/// CORS for the endpoints a page on another origin calls (`/v1/anonymous`, `/v1/events`,
/// `/v1/decide`, `/v1/me`): preflights and responses for listed origins only. Requests from
/// other origins are not blocked here (same-origin pages and servers send `Origin` too); without
/// the CORS headers a browser does not let a foreign page read the answer.
pub fn cors(allowed: &[String]) -> actix_cors::Cors {
    let allowed = allowed.to_vec();
    actix_cors::Cors::default()
        .allowed_origin_fn(move |origin, _| origin.to_str().is_ok_and(|o| listed(o, &allowed)))
        .allowed_methods(["GET", "POST", "DELETE"])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(600)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(local: &str, tls: bool) -> Conn {
        Conn {
            local: local.parse().unwrap(),
            tls,
        }
    }

    #[test]
    fn origins_parse_with_default_ports() {
        assert_eq!(
            parse("https://Example.com"),
            Some(("https", "example.com".into(), 443))
        );
        assert_eq!(
            parse("http://[::1]:8080"),
            Some(("http", "::1".into(), 8080))
        );
        for bad in [
            "null",
            "example.com",
            "ftp://x",
            "http://",
            "http://a/b",
            "http://u@a",
            "http://a:x",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert!(listed(
            "https://example.com:443",
            &["https://EXAMPLE.com".into()]
        ));
        assert!(!listed(
            "http://example.com",
            &["https://example.com".into()]
        ));
        assert!(listed("http://anything.test", &["*".into()]));
    }

    #[test]
    fn own_origin_is_proven_by_the_connection_not_by_host() {
        let c = conn("127.0.0.1:8080", false);
        assert!(own("http://127.0.0.1:8080", c));
        assert!(own("http://localhost:8080", c));
        assert!(own("http://[::1]:8080", c));
        // DNS rebinding: a name that resolves here is not this server's origin.
        assert!(!own("http://evil.example:8080", c));
        // Another scheme or port is another origin.
        assert!(!own("https://127.0.0.1:8080", c));
        assert!(!own("http://127.0.0.1:9090", c));
        // Reached at a LAN address: that IP literal is own, over TLS with https.
        let lan = conn("192.168.1.5:8443", true);
        assert!(own("https://192.168.1.5:8443", lan));
        assert!(!own("https://192.168.1.6:8443", lan));
        assert!(!own("http://192.168.1.5:8443", lan));
    }
}
