//! BIRD 2's control socket (what `birdc` speaks): connect, read the greeting, send one command,
//! read the reply. Each reply line starts with a four-digit code, then `-` when more lines follow
//! or a space on the last; codes from 8000 up are errors (8xxx runtime, 9xxx parse). Commands
//! are fixed strings here, never built from input.

use std::{io, path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

/// How long one exchange with BIRD may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// BIRD's answer: the last line's code and every line's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: Vec<String>,
}

impl Reply {
    pub fn is_error(&self) -> bool {
        self.code >= 8000
    }
}

/// One line's code, whether more follow, and its text. Continuation lines of a long answer may
/// start with a space instead of a code.
fn parse_line(line: &str) -> (Option<u16>, bool, &str) {
    let b = line.as_bytes();
    if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && (b[4] == b'-' || b[4] == b' ') {
        (line[..4].parse().ok(), b[4] == b'-', &line[5..])
    } else {
        (None, true, line.strip_prefix(' ').unwrap_or(line))
    }
}

/// Sends `command` to the BIRD listening on `socket` and returns its reply.
pub async fn request(socket: &Path, command: &'static str) -> io::Result<Reply> {
    tokio::time::timeout(TIMEOUT, exchange(socket, command))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "BIRD did not answer in 5 s"))?
}

async fn exchange(socket: &Path, command: &str) -> io::Result<Reply> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    // The greeting: "0001 BIRD 2.0.12 ready."
    let greeting = lines
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "BIRD closed at once"))?;
    if parse_line(&greeting).0 != Some(1) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not BIRD's greeting: {greeting}"),
        ));
    }
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut text = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let (code, more, rest) = parse_line(&line);
        text.push(rest.to_string());
        if let (Some(code), false) = (code, more) {
            return Ok(Reply { code, text });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "BIRD closed before its answer ended",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_are_read_as_birdc_does() {
        assert_eq!(
            parse_line("0001 BIRD 2.0.12 ready."),
            (Some(1), false, "BIRD 2.0.12 ready.")
        );
        assert_eq!(
            parse_line("1000-BIRD 2.0.12"),
            (Some(1000), true, "BIRD 2.0.12")
        );
        assert_eq!(parse_line(" continued"), (None, true, "continued"));
        assert_eq!(
            parse_line("8002 /etc/bird.conf:3:1 syntax error"),
            (Some(8002), false, "/etc/bird.conf:3:1 syntax error")
        );
        assert!(
            Reply {
                code: 8002,
                text: vec![]
            }
            .is_error()
        );
    }
}
