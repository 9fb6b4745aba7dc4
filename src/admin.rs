//! The HTTP admin endpoint: `GET /health`, `GET /metrics` (Prometheus text), `GET /status`
//! (JSON for `depot status`). One request per connection, plain HTTP/1.1.

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

/// Parses the request line of a request head: method and path (query string dropped).
pub fn parse_request_line(head: &[u8]) -> Result<(&str, &str), &'static str> {
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
    let path = target.split('?').next().unwrap_or(target);
    Ok((method, path))
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
            Ok((method, path)) => {
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
            Ok(("GET", "/metrics"))
        );
        assert!(parse_request_line(b"GET /metrics\r\n\r\n").is_err());
        assert!(parse_request_line(b"GET / SPDY/3\r\n\r\n").is_err());
        assert!(parse_request_line(b"\xff\xfe / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_request_line(b"no line end").is_err());
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
