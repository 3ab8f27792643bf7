//! Hostile input over real sockets: WebSocket frames that claim gigabytes, sockets that talk
//! without authenticating. Raw TCP, so the test can send what no well-behaved client library
//! would, and the server's resident memory read from /proc.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A WebSocket handshake on a raw TCP stream; the stream is left just after the 101 answer.
fn raw_ws(s: &Server, path: &str) -> TcpStream {
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        t,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        t.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    t
}

/// A masked client frame header for a payload of `len` bytes.
fn header(opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= u16::MAX as u64 {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as it is
    h
}

fn text_frame(text: &str) -> Vec<u8> {
    let mut f = header(0x1, text.len() as u64);
    f.extend_from_slice(text.as_bytes());
    f
}

/// Reads server frames until a close frame: its code, and the text frames before it.
fn read_until_close(t: &mut TcpStream) -> (Option<u16>, Vec<String>) {
    let mut texts = Vec::new();
    loop {
        let mut h = [0u8; 2];
        if t.read_exact(&mut h).is_err() {
            return (None, texts);
        }
        let mut len = (h[1] & 0x7f) as u64;
        if len == 126 {
            let mut b = [0u8; 2];
            t.read_exact(&mut b).unwrap();
            len = u16::from_be_bytes(b) as u64;
        } else if len == 127 {
            let mut b = [0u8; 8];
            t.read_exact(&mut b).unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        t.read_exact(&mut payload).unwrap();
        match h[0] & 0x0f {
            0x8 => {
                let code =
                    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (code, texts);
            }
            0x1 => texts.push(String::from_utf8(payload).unwrap()),
            _ => {}
        }
    }
}

/// Sends `header` and then up to `data` bytes of payload; how many were written before the
/// server stopped taking them.
fn flood(t: &mut TcpStream, header: &[u8], data: usize) -> usize {
    t.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    t.write_all(header).unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < data {
        match t.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => sent += n,
        }
    }
    sent
}

#[test]
fn websocket_frames_are_refused_at_their_header_and_unauthenticated_sockets_are_capped() {
    let s = Server::start(Opts::config("[limits]\nmax_body_bytes = 65536\n"));
    let token = s.identify("hostile-frames");
    let before = rss_kib(s.pid());

    // An authenticated socket announces a 1 GiB frame and streams 48 MiB of it: closed with
    // 1009 at the header; the server never holds the data.
    let mut t = raw_ws(&s, "/v1/ws");
    t.write_all(&text_frame(
        &json!({"type": "auth", "token": token}).to_string(),
    ))
    .unwrap();
    let mut ready = [0u8; 2 + 16];
    t.read_exact(&mut ready).unwrap();
    assert_eq!(&ready[2..], br#"{"type":"ready"}"#);
    let mut reader = t.try_clone().unwrap();
    let closer = std::thread::spawn(move || read_until_close(&mut reader));
    let started = Instant::now();
    flood(&mut t, &header(0x1, 1 << 30), 48 << 20);
    let (code, texts) = closer.join().unwrap();
    assert_eq!(code, Some(1009), "{texts:?}");
    assert!(
        texts.iter().any(|m| m.contains("protocol_error")),
        "{texts:?}"
    );
    assert!(started.elapsed() < WAIT);

    // Before authenticating: a frame claiming 2 GiB, and a socket sending more than a few KiB
    // in frames that are each within the limit, are both closed with 1009 (not read as a
    // first message, which would be 1008).
    for (frame_header, size) in [
        (header(0x1, 2 << 30), 16 << 20),
        (header(0x1, 60_000), 60_000),
    ] {
        let mut t = raw_ws(&s, "/v1/ws");
        let mut reader = t.try_clone().unwrap();
        let closer = std::thread::spawn(move || read_until_close(&mut reader));
        flood(&mut t, &frame_header, size);
        let (code, texts) = closer.join().unwrap();
        assert_eq!(code, Some(1009), "{texts:?}");
    }

    // The admin live feed (64 KiB frames) the same, before its admin token.
    let mut t = raw_ws(&s, "/v1/admin/live");
    let mut reader = t.try_clone().unwrap();
    let closer = std::thread::spawn(move || read_until_close(&mut reader));
    flood(&mut t, &header(0x1, 512 << 20), 16 << 20);
    assert_eq!(closer.join().unwrap().0, Some(1009));

    // Memory: the 80 MiB sent above never accumulated (it grew by 1 GiB before the guard).
    let grown_mib = rss_kib(s.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 24, "the server grew by {grown_mib} MiB");
    let metrics = s.get("/metrics", None).body;
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("reason=\"ws_frame\"") && !l.ends_with(" 0")),
        "{metrics}"
    );

    // Well-behaved sockets still work: a full-size frame within the limit is read.
    let mut ws = s.ws_connect(&token);
    let big = "y".repeat(40_000);
    ws.send_json(
        &json!({"type": "events", "events": [custom(&eid("big"), "note", json!({"text": big}))]}),
    );
    let reply = ws.recv_json_until(deadline(WAIT), |m| {
        m["type"] == "ack" || m["type"] == "error"
    });
    assert!(reply.is_some());
}

/// Sends a raw HTTP/1.1 request (`Connection: close`); the status and headers (lowercase names).
fn raw_http(s: &Server, head: &str) -> (u16, Vec<(String, String)>) {
    let mut t = TcpStream::connect(&s.addr).unwrap();
    t.set_read_timeout(Some(WAIT)).unwrap();
    t.write_all(head.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if t.read(&mut b).unwrap() == 0 {
            break;
        }
        buf.push(b[0]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

fn header_of<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A WebSocket handshake with the given Host and Origin: the answer's status.
fn ws_handshake(s: &Server, path: &str, host: &str, origin: &str) -> u16 {
    raw_http(
        s,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        ),
    )
    .0
}

#[test]
fn origins_are_proven_by_the_connection_and_cors_answers_listed_origins_only() {
    let s = Server::start(Opts::config(
        "allowed_origins = [\"https://shop.example\"]\n",
    ));
    let port = s.addr.rsplit(':').next().unwrap();
    let evil = format!("evil.example:{port}");

    // DNS rebinding: Host and Origin agree on the attacker's name, which is not this server.
    for path in ["/v1/ws", "/v1/admin/live"] {
        assert_eq!(
            ws_handshake(&s, path, &evil, &format!("http://{evil}")),
            403,
            "{path}"
        );
        // The server's own origin, by its address or a loopback name; a listed origin.
        assert_eq!(
            ws_handshake(&s, path, &s.addr, &format!("http://{}", s.addr)),
            101,
            "{path}"
        );
        assert_eq!(
            ws_handshake(&s, path, &s.addr, &format!("http://localhost:{port}")),
            101
        );
        assert_eq!(ws_handshake(&s, path, &s.addr, "https://shop.example"), 101);
        // Another scheme or port is another origin.
        assert_eq!(
            ws_handshake(&s, path, &s.addr, &format!("https://{}", s.addr)),
            403
        );
        assert_eq!(ws_handshake(&s, path, &s.addr, "http://127.0.0.1:1"), 403);
    }

    // CORS preflight from the listed origin on the endpoints a page calls.
    let preflight = |path: &str, origin: &str| {
        raw_http(
            &s,
            &format!(
                "OPTIONS {path} HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
                 Access-Control-Request-Method: POST\r\n\
                 Access-Control-Request-Headers: authorization, content-type\r\n\
                 Connection: close\r\n\r\n",
                s.addr
            ),
        )
    };
    for path in ["/v1/anonymous", "/v1/events", "/v1/decide", "/v1/me"] {
        let (status, h) = preflight(path, "https://shop.example");
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header_of(&h, "access-control-allow-origin"),
            Some("https://shop.example")
        );
        let methods = header_of(&h, "access-control-allow-methods").unwrap_or("");
        assert!(methods.contains("POST"), "{methods}");
        let allowed = header_of(&h, "access-control-allow-headers")
            .unwrap_or("")
            .to_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{allowed}"
        );
        // An unlisted origin gets no CORS answer.
        let (_, h) = preflight(path, "https://evil.example");
        assert_eq!(header_of(&h, "access-control-allow-origin"), None, "{path}");
    }
    // Admin endpoints are not for pages: no CORS even for a listed origin.
    let (_, h) = preflight("/v1/rules", "https://shop.example");
    assert_eq!(header_of(&h, "access-control-allow-origin"), None);

    // The actual request: the listed origin may read the answer; another may not.
    let anon = |origin: &str| {
        raw_http(
            &s,
            &format!(
                "POST /v1/anonymous HTTP/1.1\r\nHost: {}\r\nOrigin: {origin}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n",
                s.addr
            ),
        )
    };
    let (status, h) = anon("https://shop.example");
    assert_eq!(status, 200);
    assert_eq!(
        header_of(&h, "access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(header_of(&h, "vary")
        .unwrap_or("")
        .to_lowercase()
        .contains("origin"));
    let (status, h) = anon("https://evil.example");
    assert_eq!(
        status, 200,
        "not blocked here: the browser keeps the answer from the page"
    );
    assert_eq!(header_of(&h, "access-control-allow-origin"), None);
}

#[test]
fn a_body_that_trickles_in_is_cut_off_with_408() {
    let s = Server::start(Opts::config("[http]\nbody_timeout_s = 1\n"));
    let started = Instant::now();
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut t = TcpStream::connect(&s.addr).unwrap();
            t.set_read_timeout(Some(WAIT)).unwrap();
            write!(
                t,
                "POST /v1/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
                 Content-Length: 100000\r\n\r\n{{\"events\":[",
                s.addr
            )
            .unwrap();
            t
        })
        .collect();
    for t in &mut slow {
        let mut answer = String::new();
        // The answer, then the end of the connection: read_to_string returns only at EOF.
        t.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // Meanwhile and afterwards, everyone else is served.
    let t = s.identify("after-the-slow-ones");
    s.post_ok(&t, vec![custom(&eid("ok"), "x", serde_json::Value::Null)]);
}

#[test]
fn connections_beyond_the_cap_wait_until_one_closes() {
    // One connection per worker (the server runs one worker per CPU, 2 to 8).
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    let s = Server::start(Opts::config(&format!(
        "[http]\nmax_connections = {workers}\n"
    )));
    let token = s.identify("capped");
    let held: Vec<_> = (0..workers).map(|_| s.ws_connect(&token)).collect();
    let mut third = TcpStream::connect(&s.addr).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    write!(
        third,
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        s.addr
    )
    .unwrap();
    let mut b = [0u8; 1];
    assert!(third.read(&mut b).is_err(), "served beyond the cap");
    drop(held);
    third.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = String::new();
    third.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn token_minting_and_a_user_s_traffic_are_rate_limited_with_retry_after() {
    let s = Server::start(Opts::config(
        "[rate]\nanonymous_per_min = 60\nanonymous_burst = 5\nuser_per_min = 60\nuser_burst = 3\n",
    ));
    // Anonymous tokens from one address: a burst of 5, then 429 with Retry-After.
    let statuses: Vec<u16> = (0..8)
        .map(|_| s.post_raw("/v1/anonymous", None, b"").status)
        .collect();
    assert_eq!(&statuses[..5], &[200; 5]);
    let r = s.post_raw("/v1/anonymous", None, b"");
    assert_eq!(r.status, 429);
    assert_eq!(r.code(), "rate_limited");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    std::thread::sleep(Duration::from_millis(1100 * wait));
    assert_eq!(
        s.post_raw("/v1/anonymous", None, b"").status,
        200,
        "after Retry-After"
    );

    // One user's batches over HTTP: 3, then refused; nothing of a refused batch is stored.
    let t = s.identify("busy-reader");
    for i in 0..3 {
        s.post_ok(
            &t,
            vec![custom(&eid(&format!("b{i}")), "x", serde_json::Value::Null)],
        );
    }
    let refused_id = eid("refused");
    let r = s.post_events(
        &t,
        &batch(vec![custom(&refused_id, "x", serde_json::Value::Null)]),
    );
    assert_eq!((r.status, r.code()), (429, "rate_limited"));
    // The same user's socket shares the budget: the message comes back with its ids.
    let mut ws = s.ws_connect(&t);
    let id = eid("ws");
    ws.send_events(vec![custom(&id, "x", serde_json::Value::Null)]);
    let m = ws
        .recv_json_until(deadline(WAIT), |m| {
            m["type"] == "error" || m["type"] == "ack"
        })
        .unwrap();
    assert_eq!(m["code"], "rate_limited", "{m}");
    assert_eq!(m["ids"], json!([id]));
    // Another user is not affected.
    let other = s.identify("calm-reader");
    s.post_ok(
        &other,
        vec![custom(&eid("c"), "x", serde_json::Value::Null)],
    );
    // Counted, and the refused event was not stored.
    let metrics = s.get("/metrics", None).body;
    for reason in ["rate_anonymous", "rate_user"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
    let export = s.export("busy-reader").unwrap().to_string();
    assert!(!export.contains(&refused_id));
}

#[test]
fn a_user_may_hold_only_so_many_sockets() {
    let s = Server::start(Opts::config("[delivery]\nmax_sockets_per_user = 3\n"));
    let t = s.identify("many-tabs");
    let mut open: Vec<Ws> = (0..3).map(|_| s.ws_connect(&t)).collect();
    // The fourth is told why, then closed with 1008.
    let mut extra = s.ws_open(None).unwrap();
    extra.send_json(&json!({"type": "auth", "token": t}));
    let mut seen = Vec::new();
    let code = loop {
        match extra.next(WAIT) {
            Got::Json(m) => seen.push(m),
            Got::Close(c) => break c,
            Got::Nothing => panic!("neither a message nor a close: {seen:?}"),
            Got::Gone(e) => panic!("gone: {e} after {seen:?}"),
        }
    };
    assert_eq!(code, Some(1008), "{seen:?}");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["code"], "too_many_sockets");
    // Another user is not affected; once a tab closes, a new one may open.
    s.ws_connect(&s.identify("one-tab"));
    drop(open.pop());
    let reopened = poll(WAIT, || {
        let mut ws = s.ws_open(None).ok()?;
        ws.send_json(&json!({"type": "auth", "token": t}));
        let m = ws.recv_json_until(deadline(Duration::from_secs(2)), |m| {
            m["type"] == "ready" || m["type"] == "error"
        })?;
        (m["type"] == "ready").then_some(())
    });
    assert!(
        reopened.is_some(),
        "a socket freed by a closed tab is available again"
    );
}

/// A request on a raw keep-alive connection: the status line and whether the server closed it.
fn request_on(c: &mut TcpStream, addr: &str) -> (String, bool) {
    write!(c, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = c.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    let status = text.lines().next().unwrap_or("").to_string();
    // Closed: the next read gives EOF at once.
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let closed = matches!(c.read(&mut buf), Ok(0));
    (format!("{status}\n{text}"), closed)
}

#[test]
fn one_address_may_hold_only_so_many_connections() {
    let s = Server::start(Opts::config("[http]\nmax_connections_per_ip = 3\n"));
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    for c in held.iter_mut() {
        let (status, closed) = request_on(c, &s.addr);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        assert!(!closed, "a connection within the cap was closed");
    }
    // The fourth: answered 429 with the code, and closed.
    let mut fourth = TcpStream::connect(&s.addr).unwrap();
    let (answer, closed) = request_on(&mut fourth, &s.addr);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");
    assert!(closed, "the connection over the cap stayed open");
    // One closes: a new connection is served again.
    drop(held.pop());
    let fresh = poll(WAIT, || {
        let mut c = TcpStream::connect(&s.addr).ok()?;
        let (status, _) = request_on(&mut c, &s.addr);
        status.starts_with("HTTP/1.1 200").then_some(())
    });
    assert!(fresh.is_some(), "a freed slot was not reusable");
}

/// A tab closed without a close frame (the connection reset or cut mid-frame) is the client
/// going away, not a refused frame: `rejected{reason="ws_frame"}` stays at zero (it counted
/// every such socket before).
#[test]
fn a_socket_that_just_goes_away_is_not_counted_as_a_refused_frame() {
    let s = Server::start(Opts::config(""));
    let token = s.identify("leaver");
    for _ in 0..5 {
        let mut ws = s.ws_connect(&token);
        let id = eid("pv");
        ws.send_events(vec![page_view(&id, "/")]);
        ws.wait_ack(&id);
        // Half a frame, then the TCP connection closes: no close frame.
        let tcp = match ws.ws.get_mut() {
            tungstenite::stream::MaybeTlsStream::Plain(t) => t,
            _ => unreachable!("plain test server"),
        };
        use std::io::Write;
        let _ = tcp.write_all(&[0x81, 0xfe, 0x01, 0x00, 1, 2, 3, 4, b'x']);
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
    // The same before authenticating: half an auth frame, then the connection closes.
    for _ in 0..3 {
        let mut ws = s.ws_open(None).expect("handshake");
        let tcp = match ws.ws.get_mut() {
            tungstenite::stream::MaybeTlsStream::Plain(t) => t,
            _ => unreachable!("plain test server"),
        };
        use std::io::Write;
        let _ = tcp.write_all(&[0x81, 0xfe, 0x01, 0x00, 1, 2, 3, 4, b'{']);
        let _ = tcp.shutdown(std::net::Shutdown::Both);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let metrics = s.get("/metrics", None).body;
    assert!(
        !metrics
            .lines()
            .any(|l| l.contains("reason=\"ws_frame\"") && !l.ends_with(" 0")),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("rejected"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
