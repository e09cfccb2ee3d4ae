//! The campaign console at `/ui`: a few static files embedded in the binary (no CDN, no build step, no
//! Node at run time), which read everything through the JSON API with the user's API key. The scripts
//! are ES modules importing each other by relative path, so every one of them is listed here.
//!
//! A strict Content-Security-Policy keeps the page to its own origin: no inline script or style, no
//! third-party anything, no framing.

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::header::{self, HeaderValue};

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The page's files: name under `/ui/`, contents, content type.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", include_str!("ui/index.html"), HTML),
    ("app.css", include_str!("ui/app.css"), CSS),
    ("app.js", include_str!("ui/app.js"), JS),
    ("core.js", include_str!("ui/core.js"), JS),
    ("chart.js", include_str!("ui/chart.js"), JS),
    ("broadcast.js", include_str!("ui/broadcast.js"), JS),
    ("webhooks.js", include_str!("ui/webhooks.js"), JS),
];

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The response for a `/ui` path, or `None` if the path is not part of the page.
pub fn serve(path: &str) -> Option<Response<Full<Bytes>>> {
    let name = match path {
        "/ui" | "/ui/" => "index.html",
        _ => path.strip_prefix("/ui/")?,
    };
    let &(_, body, content_type) = FILES.iter().find(|(file, _, _)| *file == name)?;
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    Some(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_headers() {
        let page = serve("/ui").unwrap();
        assert_eq!(page.headers()[header::CONTENT_TYPE], HTML);
        assert!(page.headers()[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        assert_eq!(serve("/ui/app.js").unwrap().headers()[header::CONTENT_TYPE], JS);
        assert_eq!(serve("/ui/app.css").unwrap().headers()[header::CONTENT_TYPE], CSS);
        assert!(serve("/ui/secret").is_none());
        assert!(serve("/ui/../Cargo.toml").is_none());
        let size: usize = FILES.iter().map(|(_, body, _)| body.len()).sum();
        assert!(size < 80_000, "the page stays small ({size} bytes)");
        let index = FILES[0].1;
        assert!(!index.contains("<script>") && !index.contains(" style="), "no inline script or style: the CSP");
    }

    #[test]
    fn every_module_a_script_imports_is_served() {
        for (name, body, _) in FILES.iter().filter(|(name, _, _)| name.ends_with(".js")) {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let target = line.split('"').nth(1).unwrap_or_else(|| panic!("{name}: {line}"));
                let target = target.strip_prefix("./").unwrap_or_else(|| panic!("{name}: relative imports only"));
                assert!(serve(&format!("/ui/{target}")).is_some(), "{name} imports {target}, which is not served");
            }
            assert!(!body.contains("innerHTML"), "{name}: build nodes, never parse markup from data");
            assert!(!body.contains(".style."), "{name}: no inline style (the CSP's style-src)");
        }
    }
}
