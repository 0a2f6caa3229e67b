//! Interleaves every child's output on our stdout, one whole line at a time, each behind a
//! coloured name (plain when stdout is not a terminal or `NO_COLOR` is set). In a terminal,
//! JSON log lines are written for a person (`human.rs`) unless `up --json` asks for them as
//! they are.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether JSON log lines are written for a person.
static HUMAN: AtomicBool = AtomicBool::new(false);

/// Writes JSON log lines for a person from now on, if stdout is a terminal and `json` is off.
pub fn choose_format(json: bool) {
    HUMAN.store(!json && std::io::stdout().is_terminal(), Ordering::Relaxed);
}

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

const COLORS: &[&str] = &["36", "33", "35", "32", "34", "91", "96", "93", "95", "92"];

#[derive(Clone)]
pub struct Prefix {
    text: String,
}

impl Prefix {
    pub fn new(name: &str, index: usize) -> Self {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        let text = if color {
            format!("\x1b[{}m{name:>12} |\x1b[0m ", COLORS[index % COLORS.len()])
        } else {
            format!("{name:>12} | ")
        };
        Self { text }
    }

    pub fn line(&self, line: &str) {
        let human = HUMAN
            .load(Ordering::Relaxed)
            .then(|| {
                let color = std::env::var_os("NO_COLOR").is_none();
                crate::human::render_line(line, color)
            })
            .flatten();
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}{}", self.text, human.as_deref().unwrap_or(line));
    }
}

/// Copies `stream` to stdout line by line until it closes.
pub async fn pump(stream: impl AsyncRead + Unpin, prefix: Prefix) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => prefix.line(&line),
            Ok(None) => break,
            Err(_) => continue, // invalid UTF-8: skip the line, keep the stream
        }
    }
}

/// A line from the runner itself.
pub fn say(message: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{:>12} | {message}", "tessera");
}
