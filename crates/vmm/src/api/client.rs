//! The client side of the API (`vtd-nest remote`): one HTTP/1.1 request over the Unix socket,
//! the answer parsed by httparse.
//!
//! ```text
//!  request(socket, method, endpoint, accept, body)
//!    ─► connect ─► write request line, headers, body ─► read to EOF (Connection: close)
//!    ─► httparse::Response (status, Content-Length) ─► Answer { status, body }
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// The most a response may hold (the state of a unit with many devices is well below).
const MAX_RESPONSE: u64 = 16 << 20;
/// Headers parsed in a response.
const MAX_HEADERS: usize = 32;

/// Why a request got no answer; each message is one sentence.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No VMM listens there.
    #[error("Cannot connect to the API socket {} (is a VMM running with --api-socket?)", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("The API request to {} failed", .path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not an HTTP answer this client understands.
    #[error("The VMM's answer is not valid HTTP: {0}")]
    BadResponse(String),
}

/// The VMM's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The one-sentence `{"error": "..."}` message of an error answer, or the body as it is.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("HTTP status {}: {}", self.status, self.text().trim()))
    }
}

/// Sends one request and returns the answer, whatever its status.
pub fn request(
    socket: &Path,
    method: &str,
    endpoint: &str,
    accept: &str,
    body: Option<&str>,
) -> Result<Answer, ClientError> {
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let body = body.unwrap_or("");
    let mut message = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: {accept}\r\n\
         Connection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        message.push_str("Content-Type: application/json\r\n");
    }
    message.push_str("\r\n");
    message.push_str(body);
    stream.write_all(message.as_bytes()).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(ClientError::BadResponse(format!(
            "it is larger than {MAX_RESPONSE} bytes"
        )));
    }
    parse(&raw)
}

/// Parses a complete response (the connection closed after it).
fn parse(raw: &[u8]) -> Result<Answer, ClientError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err(ClientError::BadResponse(
                "the connection closed inside the headers".into(),
            ));
        }
        Err(e) => return Err(ClientError::BadResponse(e.to_string())),
    };
    let status = response
        .code
        .ok_or_else(|| ClientError::BadResponse("no status code".into()))?;
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
    };
    if header("transfer-encoding").is_some_and(|te| !te.eq_ignore_ascii_case("identity")) {
        return Err(ClientError::BadResponse(
            "it uses a transfer encoding other than identity".into(),
        ));
    }
    let rest = &raw[head..];
    let body = match header("content-length") {
        Some(length) => {
            let length: usize = length
                .parse()
                .map_err(|_| ClientError::BadResponse(format!("Content-Length '{length}'")))?;
            rest.get(..length).ok_or_else(|| {
                ClientError::BadResponse("the body is shorter than its Content-Length".into())
            })?
        }
        None => rest,
    };
    Ok(Answer {
        status,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_parsed_and_a_truncated_one_refused() {
        let answer = parse(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 21\r\n\r\n{\"error\":\"No such.\"}\nEXTRA")
            .unwrap();
        assert_eq!(answer.status, 400);
        assert!(!answer.ok());
        assert_eq!(answer.error_message(), "No such.");
        let short = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap_err();
        assert_eq!(
            short.to_string(),
            "The VMM's answer is not valid HTTP: the body is shorter than its Content-Length"
        );
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le"),
            Err(ClientError::BadResponse(_))
        ));
        assert!(matches!(
            parse(b"garbage\r\n\r\n"),
            Err(ClientError::BadResponse(_))
        ));
    }

    #[test]
    fn a_missing_socket_is_one_sentence() {
        let path = std::env::temp_dir().join("vtd-nest-no-such-api.sock");
        let err = request(&path, "GET", "vm.info", "application/json", None).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "Cannot connect to the API socket {} (is a VMM running with --api-socket?)",
                path.display()
            )
        );
    }
}
