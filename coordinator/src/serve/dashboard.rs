//! The dashboard: one page with its script and style sheet (`coordinator/static/`), embedded in the binary. It
//! polls `/api/status` every 2 s and draws the cluster (the coordinator's links to the nodes with their measured
//! round trip and bandwidth), the plan (which layers run where, tensor-parallel members as split rows), per-node
//! load and tok/s and the recent jobs; its chat box streams replies from `/v1/chat/completions`. The page loads
//! nothing from the network but these three files. `/#ask=TEXT[&max_tokens=N][&temperature=T]` sends TEXT once on
//! load (for scripts and the end-to-end test). The page is public; with an API key set, the API calls it makes need
//! the key, which the page asks for on a 401 and keeps in the browser's localStorage.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::HeaderName;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const HTML: &str = include_str!("../../static/dashboard.html");
const JS: &str = include_str!("../../static/dashboard.js");
const CSS: &str = include_str!("../../static/dashboard.css");

/// Only the page's own files; no inline script, no framing, no other origin (node names and job errors come from
/// cluster members and are always inserted as text, this is the second line of defense).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `GET /` and `GET /dashboard` (the page), `/dashboard.js`, `/dashboard.css`. Merged into the API's router.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(root))
        .route("/dashboard", get(page))
        .route("/dashboard.js", get(script))
        .route("/dashboard.css", get(style))
}

/// The page for browsers; "Ollama is running" for the Ollama clients that probe `/` (they do not ask for HTML).
async fn root(headers: axum::http::HeaderMap) -> axum::response::Response {
    let html =
        headers.get(axum::http::header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if html {
        page().await.into_response()
    } else {
        ([(CONTENT_TYPE, "text/plain; charset=utf-8")], "Ollama is running").into_response()
    }
}

async fn page() -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, "text/html; charset=utf-8"),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("content-security-policy"), CSP),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        HTML,
    )
}

async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", JS)
}

async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (CONTENT_TYPE, content_type),
            (CACHE_CONTROL, "no-cache"),
            (HeaderName::from_static("x-content-type-options"), "nosniff"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves [`super::router`] on an ephemeral port and returns (status line, headers lowercased, body) of a GET.
    async fn get(path: &str) -> (String, String, String) {
        get_accepting(path, "text/html,application/xhtml+xml,*/*;q=0.8").await
    }

    async fn get_accepting(path: &str, accept: &str) -> (String, String, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, super::router::<()>()).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut raw)).await.unwrap().unwrap();
        server.abort();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap();
        (status.to_string(), headers.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn the_page_is_served_at_the_root_and_at_dashboard() {
        for path in ["/", "/dashboard"] {
            let (status, headers, body) = get(path).await;
            assert_eq!(status, "HTTP/1.1 200 OK", "{path}");
            assert!(headers.contains("content-type: text/html; charset=utf-8"), "{headers}");
            assert!(headers.contains("cache-control: no-cache"), "{headers}");
            assert!(headers.contains("content-security-policy: default-src 'none'"), "{headers}");
            assert_eq!(body, super::HTML);
        }
        let (_, headers, body) = get("/dashboard.js").await;
        assert!(headers.contains("content-type: text/javascript; charset=utf-8"), "{headers}");
        assert!(headers.contains("cache-control: no-cache"), "{headers}");
        assert_eq!(body, super::JS);
        let (_, headers, body) = get("/dashboard.css").await;
        assert!(headers.contains("content-type: text/css; charset=utf-8"), "{headers}");
        assert_eq!(body, super::CSS);
        let (status, _, _) = get("/dashboard.txt").await;
        assert!(status.contains("404"), "{status}");
        // A client that does not ask for HTML at the root is an Ollama client probing the server.
        let (status, headers, body) = get_accepting("/", "*/*").await;
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "Ollama is running"));
        assert!(headers.contains("content-type: text/plain"), "{headers}");
    }

    #[test]
    fn the_page_needs_nothing_from_the_network() {
        // Every src/href is one of the page's own files (or a data: URL); no CDN, no web font.
        for (name, text) in [("html", super::HTML), ("css", super::CSS), ("js", super::JS)] {
            for marker in ["src=\"http", "href=\"http", "url(http", "@import", "//cdn", "fonts.googleapis"] {
                assert!(!text.contains(marker), "{name} contains {marker}");
            }
        }
        assert!(super::HTML.contains("src=\"dashboard.js\"") && super::HTML.contains("href=\"dashboard.css\""));
        // Server data goes in as text: the script never assigns HTML.
        assert!(!super::JS.contains("innerHTML") && !super::JS.contains("insertAdjacentHTML"));
    }
}
