//! The web app (web/, built into web/dist and embedded by build.rs): its files, and the app's
//! page for the paths the app routes itself (`/f/alice/hello`, …), so links and reloads work.
//! Everything else falls through to the API's JSON 404.

use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

pub(crate) struct Asset {
    pub path: &'static str,
    pub body: &'static [u8],
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// Paths the app shows a page for (the router in web/src/app.tsx).
const PAGES: [&str; 6] = ["/", "/signup", "/login", "/skybox", "/functions", "/new"];
const PAGE_PREFIXES: [&str; 2] = ["/f/", "/edit/"];

/// Only this site's scripts and connections; styles inline because the editor injects them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                   base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// What to answer for a GET that no API route took: a file of the app, the app's page, or
/// `None` (the caller answers its JSON 404).
pub(crate) fn respond(method: &Method, path: &str, headers: &HeaderMap) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let gzip_ok = accepts(headers, header::ACCEPT_ENCODING, "gzip");
    if let Some(asset) = find(path).filter(|_| path != "/index.html") {
        return Some(file(asset, gzip_ok, StatusCode::OK));
    }
    // The front page for anyone; other pages only for browsers (an API client asking for a
    // missing route wants the JSON error).
    if path != "/" && (!accepts(headers, header::ACCEPT, "text/html") || path.starts_with("/api/"))
    {
        return None;
    }
    let status = if is_page(path) {
        StatusCode::OK
    } else {
        // The app shows its "not found" page; the status still says so.
        StatusCode::NOT_FOUND
    };
    Some(match find("/index.html") {
        Some(index) => file(index, gzip_ok, status),
        None => not_built(),
    })
}

fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}

pub(crate) fn is_page(path: &str) -> bool {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    PAGES.contains(&path)
        || PAGE_PREFIXES.iter().any(|p| {
            path.strip_prefix(p)
                .is_some_and(|rest| rest.split('/').filter(|s| !s.is_empty()).count() == 2)
        })
}

fn accepts(headers: &HeaderMap, name: header::HeaderName, what: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(what))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn file(asset: &'static Asset, gzip_ok: bool, status: StatusCode) -> Response {
    // Hashed names never change content; everything else is checked on each load.
    let cache = if asset.path.starts_with("/assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(asset.path)),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.path.ends_with(".html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    match asset.gzip {
        Some(gz) if gzip_ok => {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            (status, headers, gz).into_response()
        }
        _ => (status, headers, asset.body).into_response(),
    }
}

fn not_built() -> Response {
    let body = "<!doctype html><title>Skython</title><h1>The web UI is not in this build</h1>\
                <p>Build it with <code>make web</code>, then rebuild the binary \
                (<code>make run</code> does both). The API works: see \
                <a href=\"/api/openapi.json\">/api/openapi.json</a>.</p>";
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apps_own_routes_are_pages() {
        for p in [
            "/",
            "/signup",
            "/skybox",
            "/new",
            "/functions/",
            "/f/alice/hello",
            "/edit/alice/hello",
        ] {
            assert!(is_page(p), "{p}");
        }
    }

    #[test]
    fn other_paths_are_not_pages() {
        for p in [
            "/nope",
            "/f/alice",
            "/f/alice/hello/extra",
            "/edit/",
            "/fn/alice/hello",
            "/api/v1/me",
        ] {
            assert!(!is_page(p), "{p}");
        }
    }

    fn html() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        h
    }

    #[test]
    fn a_page_is_the_app_with_its_security_headers_or_says_how_to_build_it() {
        let page = respond(&Method::GET, "/f/alice/hello", &html()).expect("a page");
        if find("/index.html").is_some() {
            assert_eq!(page.status(), StatusCode::OK);
            let csp = page.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert_eq!(page.headers()[header::CACHE_CONTROL], "no-cache");
        } else {
            assert_eq!(page.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
    }

    #[test]
    fn an_unknown_page_is_the_apps_not_found_page_with_a_404() {
        let page = respond(&Method::GET, "/no/such/page", &html()).expect("a page");
        if find("/index.html").is_some() {
            assert_eq!(page.status(), StatusCode::NOT_FOUND);
        }
    }

    #[test]
    fn hashed_assets_are_cached_for_good_and_gzipped_when_asked() {
        let Some(asset) = ASSETS.iter().find(|a| a.path.ends_with(".js")) else {
            return; // the app is not built into this binary
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br"),
        );
        let r = respond(&Method::GET, asset.path, &h).expect("the asset");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CACHE_CONTROL]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );
        let plain = respond(&Method::GET, asset.path, &HeaderMap::new()).expect("the asset");
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
    }

    #[test]
    fn only_a_browser_asking_for_html_gets_the_page() {
        let mut json = HeaderMap::new();
        json.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        assert!(respond(&Method::GET, "/skybox", &json).is_none());
        assert!(respond(&Method::POST, "/skybox", &HeaderMap::new()).is_none());
        assert!(respond(&Method::GET, "/api/v1/nope", &html()).is_none());
    }
}
