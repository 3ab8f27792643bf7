//! Static assets (SDK, demo, dashboard, vendored libraries), embedded in the binary from
//! `static/` with rust-embed (debug builds read the folder from disk, so pages can be edited
//! without rebuilding). `/` is the demo, `/dashboard` the dashboard; every other file is served
//! at its path relative to `static/`, with an ETag.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse};
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "static/"]
struct Static;

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
    Some(
        HttpResponse::Ok()
            .insert_header((header::CONTENT_TYPE, mime))
            .insert_header((header::ETAG, etag))
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header(("X-Content-Type-Options", "nosniff"))
            .insert_header(("Referrer-Policy", "same-origin"))
            .body(file.data.into_owned()),
    )
}
