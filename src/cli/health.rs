//! `trimtab health [--url URL]`: probes `GET /readyz` of a running server and exits 0 when it
//! answers 200 (ready), 1 otherwise (not ready, recovering, shutting down, unreachable). It is
//! the container image's healthcheck, so it needs nothing but the binary: one plain HTTP/1.1
//! request over a std `TcpStream`, with a deadline on connecting and on reading.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long connecting and answering may take, each.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The URL to probe for a listen address: a wildcard address is probed on loopback.
pub fn url_for(addr: &str) -> String {
    let addr = addr
        .replace("0.0.0.0:", "127.0.0.1:")
        .replace("[::]:", "[::1]:");
    format!("http://{addr}")
}

/// The probe's outcome: `Ok(status line)` when the server said it is ready, `Err(why)` else.
pub fn probe(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("{url}: only http:// URLs are probed (point --url at the plain listener)")
    })?;
    let host = rest.split('/').next().unwrap_or(rest);
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("{host}: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET /readyz HTTP/1.1\r\nHost: {host}\r\nUser-Agent: trimtab-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{host}: {e}"))?;
    let mut answer = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| format!("{host}: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or("").to_string();
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    match status_line.split_whitespace().nth(1) {
        Some("200") => Ok(format!("{status_line} {body}")),
        Some(_) => Err(format!("not ready: {status_line} {body}")),
        None => Err(format!("{host}: not an HTTP answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_addresses_are_probed_on_loopback() {
        assert_eq!(url_for("0.0.0.0:8080"), "http://127.0.0.1:8080");
        assert_eq!(url_for("[::]:8080"), "http://[::1]:8080");
        assert_eq!(url_for("10.0.0.2:9000"), "http://10.0.0.2:9000");
    }

    #[test]
    fn a_closed_port_and_a_non_http_answer_are_not_ready() {
        // A port that was free a moment ago: nothing listens.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(&format!("http://127.0.0.1:{port}")).is_err());
        assert!(probe("https://127.0.0.1:1")
            .unwrap_err()
            .contains("only http://"));
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 503 Service Unavailable\r\n\r\n{\"status\":\"recovering\"}",
                "garbage",
            ] {
                let (mut c, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf);
                c.write_all(answer.as_bytes()).unwrap();
            }
        });
        assert!(probe(&url).unwrap_err().contains("recovering"));
        assert!(probe(&url).unwrap_err().contains("not an HTTP answer"));
        t.join().unwrap();
    }
}
