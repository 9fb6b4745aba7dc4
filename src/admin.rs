//! The HTTP admin endpoint: `GET /health`, `GET /metrics` (Prometheus text), `GET /status`
//! (JSON for `depot status`), `POST /backup?dir=PATH` (a consistent copy of the store, for
//! `depot backup`). One request per connection, plain HTTP/1.1.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::state::AppState;

/// Longest request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A response to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: String,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    fn json(status: u16, body: String) -> Self {
        Response {
            status,
            content_type: "application/json",
            body,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            500 => "Internal Server Error",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

/// Parses the request line of a request head: method, path and query string (may be empty).
pub fn parse_request_line(head: &[u8]) -> Result<(&str, &str, &str), &'static str> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or("no request line")?;
    let line = std::str::from_utf8(&head[..line_end]).map_err(|_| "request line is not UTF-8")?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line");
    };
    if !version.starts_with("HTTP/1.") {
        return Err("unsupported HTTP version");
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok((method, path, query))
}

/// Answers one parsed request.
pub fn route(state: &AppState, method: &str, path: &str) -> Response {
    if method != "GET" && method != "HEAD" {
        return Response::text(405, "only GET is supported\n");
    }
    match path {
        "/health" => {
            let health = state.health();
            let status = if health.ok { 200 } else { 503 };
            Response::json(status, serde_json::to_string(&health).unwrap_or_default())
        }
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: state.metrics(),
        },
        "/status" => Response::json(
            200,
            serde_json::to_string(&state.status()).unwrap_or_default(),
        ),
        _ => Response::text(404, "not found; try /health, /metrics or /status\n"),
    }
}

/// Serves requests until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move { handle(stream, &state).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
}

async fn handle(mut stream: TcpStream, state: &AppState) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => match parse_request_line(&head) {
            Ok(("POST", "/backup", query)) => backup(state, query).await,
            Ok((method, path, _)) => {
                let mut response = route(state, method, path);
                if method == "HEAD" {
                    response.body.clear();
                }
                response
            }
            Err(reason) => Response::text(400, format!("{reason}\n")),
        },
        Ok(Err(response)) => response,
        Err(_) => return,
    };
    state.count_http_request();
    let _ = stream.write_all(&response.to_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `POST /backup?dir=PATH`: writes the backup (writes wait meanwhile) and answers its figures.
async fn backup(state: &AppState, query: &str) -> Response {
    let Some(dir) = query_value(query, "dir").filter(|d| d.starts_with('/')) else {
        return Response::text(400, "POST /backup?dir=/absolute/path\n");
    };
    let store = state.store.clone();
    let started = std::time::Instant::now();
    let outcome =
        tokio::task::spawn_blocking(move || store.backup(std::path::Path::new(&dir))).await;
    match outcome {
        Ok(Ok(stats)) => {
            tracing::info!(
                ?stats,
                secs = started.elapsed().as_secs_f64(),
                "backup written"
            );
            Response::json(200, serde_json::to_string(&stats).unwrap_or_default())
        }
        Ok(Err(e)) => Response::text(500, format!("backup failed: {e}\n")),
        Err(e) => Response::text(500, format!("backup failed: {e}\n")),
    }
}

/// The value of `name` in a query string, percent-decoded.
fn query_value(query: &str, name: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Response> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|_| Response::text(400, "read failed\n"))?;
        if n == 0 {
            return Err(Response::text(400, "incomplete request\n"));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(head);
        }
        if head.len() > MAX_HEAD_BYTES {
            return Err(Response::text(431, "request head too large\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(("GET", "/metrics", "x=1"))
        );
        assert!(parse_request_line(b"GET /metrics\r\n\r\n").is_err());
        assert!(parse_request_line(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_request_line(b"\xff\xfe / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request_line(b"no line end").is_err());
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            query_value("a=1&dir=%2Ftmp%2Fmy%20backup", "dir").as_deref(),
            Some("/tmp/my backup")
        );
        assert_eq!(query_value("dir=/x", "d"), None);
        assert_eq!(query_value("dir=%zz", "dir"), None);
        assert_eq!(query_value("dir=%2", "dir").as_deref(), Some("%2"));
    }

    #[test]
    fn response_has_length_and_reason() {
        let bytes = Response::text(404, "nope").to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Content-Length: 4\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nnope"), "{text}");
    }
}
