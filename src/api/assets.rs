//! Static assets (SDK, demo, dashboard, vendored libraries), embedded in the binary from
//! `static/` with rust-embed (debug builds read the folder from disk, so pages can be edited
//! without rebuilding). `/` is the demo, `/dashboard` the dashboard; every other file is served
//! at its path relative to `static/`, with an ETag. Pages carry a strict Content-Security-Policy
//! (scripts only from this server, no inline script, no framing): [`csp`].

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Static;

/// The Content-Security-Policy of a page. Scripts, connections (the WebSocket included), images
/// and fonts only from this server, no inline script anywhere, never framed. The demo pages also
/// allow inline styles: the SDK inserts its adjustment styles as a `<style>` element, as it
/// does on any site that embeds it; the dashboard takes styles from its stylesheets only.
pub fn csp(path: &str) -> &'static str {
    if path == "dashboard.html" {
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
         object-src 'none'"
    } else {
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'; object-src 'none'"
    }
}

/// Serves `path` (relative to `static/`) or `None` when there is no such file.
pub fn serve(req: &HttpRequest, path: &str) -> Option<HttpResponse> {
    let path = match path.trim_start_matches('/') {
        "" => "index.html",
        "dashboard" | "dashboard/" => "dashboard.html",
        p => p,
    };
    if path.split('/').any(|seg| seg == "..") {
        return None;
    }
    let file = Static::get(path)?;
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    if req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Some(HttpResponse::NotModified().finish());
    }
    let mime = file.metadata.mimetype();
    let mime = if mime.starts_with("text/") || mime.ends_with("javascript") {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    };
    let mut resp = HttpResponse::Ok();
    resp.insert_header((header::CONTENT_TYPE, mime.as_str()))
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Referrer-Policy", "same-origin"));
    if mime.starts_with("text/html") {
        resp.insert_header(("Content-Security-Policy", csp(path)))
            .insert_header(("X-Frame-Options", "DENY"));
    }
    Some(resp.body(file.data.into_owned()))
}
