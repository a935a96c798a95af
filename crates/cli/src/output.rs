//! Everything the client prints goes through [`Out`]: results on stdout (text, one JSON document
//! or JSON lines with `--json`), progress, notes, warnings and errors on stderr. It owns the
//! decisions "is this a terminal", "may I use colour" (never with `NO_COLOR`, `TERM=dumb` or
//! `--json`) and "may I show progress" (never with `--quiet` or `--json`).
//!
//! Writes ignore I/O errors on purpose: a closed pipe (`stackyard ls | head -1`) must not turn
//! into a panic or a second error message.

use crate::error::CliError;
use serde::Serialize;
use serde_json::Value;
use std::io::{IsTerminal, Write};

/// How a piece of text is painted when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    Dim,
    Green,
    Yellow,
    Red,
    Cyan,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Plain => "",
            Style::Bold => "1",
            Style::Dim => "2",
            Style::Green => "32",
            Style::Yellow => "33",
            Style::Red => "31",
            Style::Cyan => "36",
        }
    }
}

/// The colour of a stack, service or release status.
pub fn status_style(status: &str) -> Style {
    match status {
        "healthy" | "live" => Style::Green,
        "failed" => Style::Red,
        "building" | "deploying" | "pending" | "deleting" => Style::Yellow,
        "superseded" | "stopped" => Style::Dim,
        _ => Style::Plain,
    }
}

/// Replaces control characters (ANSI escapes included) with `?`, so text that came from the
/// server or a service (an error message, a name) cannot drive the user's terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Multi-line text (a service's last log lines in an error) on one line: lines cleaned,
/// blank ones dropped, joined with ` | `.
pub fn one_line(s: &str) -> String {
    s.lines()
        .map(|l| clean(l.trim()))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Multi-line text kept multi-line: each line cleaned, continuation lines indented by `indent`.
pub fn indented(s: &str, indent: &str) -> String {
    s.lines()
        .map(clean)
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"))
}

/// Where output goes and how it looks; built once per invocation.
#[derive(Debug, Clone)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
    color_stdout: bool,
    color_stderr: bool,
    stderr_tty: bool,
    stdout_tty: bool,
}

fn color_allowed() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
    !no_color && !dumb
}

impl Out {
    pub fn new(json: bool, quiet: bool) -> Out {
        let stdout_tty = std::io::stdout().is_terminal();
        let stderr_tty = std::io::stderr().is_terminal();
        let color = !json && color_allowed();
        Out {
            json,
            quiet,
            color_stdout: color && stdout_tty,
            color_stderr: color && stderr_tty,
            stderr_tty,
            stdout_tty,
        }
    }

    /// Whether progress and notes are shown at all.
    pub fn chatty(&self) -> bool {
        !self.json && !self.quiet
    }

    /// Whether progress may redraw lines in place (stderr is a terminal).
    pub fn live(&self) -> bool {
        self.chatty() && self.stderr_tty
    }

    fn paint_with(on: bool, style: Style, text: &str) -> String {
        if !on || style == Style::Plain {
            return text.to_owned();
        }
        format!("\x1b[{}m{text}\x1b[0m", style.code())
    }

    /// `text` styled for stdout.
    pub fn paint(&self, style: Style, text: &str) -> String {
        Self::paint_with(self.color_stdout, style, text)
    }

    /// `text` styled for stderr.
    pub fn paint_err(&self, style: Style, text: &str) -> String {
        Self::paint_with(self.color_stderr, style, text)
    }

    /// A result line on stdout.
    pub fn println(&self, text: &str) {
        let mut o = std::io::stdout().lock();
        let _ = writeln!(o, "{text}");
        let _ = o.flush();
    }

    /// One JSON line on stdout (streams, and the single document of non-stream commands when
    /// stdout is not a terminal).
    pub fn json_line(&self, v: &(impl Serialize + ?Sized)) {
        self.println(&document(v).to_string());
    }

    /// The one JSON document of a command: pretty on a terminal, one line otherwise.
    pub fn json_doc(&self, v: &(impl Serialize + ?Sized)) {
        let v = document(v);
        if self.stdout_tty {
            let text = serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string());
            self.println(&text);
        } else {
            self.println(&v.to_string());
        }
    }

    /// Progress and notes on stderr; silent with `--quiet` or `--json`.
    pub fn note(&self, text: &str) {
        if self.chatty() {
            self.eprint_line(text);
        }
    }

    /// Raw text on stderr (used by the live progress display, which manages its own lines).
    pub fn eprint_raw(&self, text: &str) {
        let mut e = std::io::stderr().lock();
        let _ = e.write_all(text.as_bytes());
        let _ = e.flush();
    }

    fn eprint_line(&self, text: &str) {
        self.eprint_raw(&format!("{text}\n"));
    }

    /// A warning on stderr: shown even with `--quiet`; a JSON line with `--json`.
    pub fn warn(&self, text: &str) {
        if self.json {
            self.eprint_line(&serde_json::json!({ "warning": text }).to_string());
        } else {
            let label = self.paint_err(Style::Yellow, "warning:");
            self.eprint_line(&format!("{label} {text}"));
        }
    }

    /// The final error of a command, on stderr: the server's message and `agent_action`, the
    /// CLI hint, and the code, status and request id for bug reports.
    pub fn error(&self, e: &CliError) {
        if self.json {
            self.eprint_line(&e.to_json().to_string());
            return;
        }
        let label = self.paint_err(Style::Red, "error:");
        let mut text = format!("{label} {}", indented(&e.message, "    "));
        if let Some(a) = e.agent_action() {
            text.push_str(&format!("\n  next: {}", one_line(a)));
        }
        if let Some(h) = &e.hint {
            text.push_str(&format!("\n  hint: {}", one_line(h)));
        }
        let mut meta = Vec::new();
        if let Some(s) = e.status {
            meta.push(format!("HTTP {s}"));
        }
        if let Some(c) = &e.code {
            meta.push(clean(c));
        }
        if let Some(r) = e.request_id() {
            meta.push(format!("request {}", clean(r)));
        }
        if !meta.is_empty() {
            let meta = self.paint_err(Style::Dim, &format!("({})", meta.join(", ")));
            text.push_str(&format!("\n  {meta}"));
        }
        self.eprint_line(&text);
    }
}

/// What `--json` prints for `v`: the value as a `serde_json::Value`, whose objects keep their
/// keys sorted, so a document reads the same whether it was built with `json!`, received from
/// the server or serialized from a wire type.
fn document(v: &(impl Serialize + ?Sized)) -> Value {
    // Our documents are maps with string keys and plain values, which always convert.
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// One table cell: plain text and how to paint it.
#[derive(Debug, Clone)]
pub struct Cell {
    pub text: String,
    pub style: Style,
}

impl Cell {
    pub fn plain(text: impl Into<String>) -> Cell {
        Cell::styled(text, Style::Plain)
    }

    pub fn styled(text: impl Into<String>, style: Style) -> Cell {
        Cell {
            text: one_line(&text.into()),
            style,
        }
    }

    pub fn status(text: &str) -> Cell {
        Cell::styled(text, status_style(text))
    }
}

/// Renders a left-aligned table with a bold header, columns two spaces apart. Widths come from
/// the unpainted text, so colour never breaks the alignment; the last column is not padded.
pub fn table(out: &Out, headers: &[&str], rows: &[Vec<Cell>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate().take(cols) {
            widths[i] = widths[i].max(c.text.chars().count());
        }
    }
    let mut lines = Vec::with_capacity(rows.len() + 1);
    let render = |cells: Vec<(String, Style)>| {
        let mut line = String::new();
        let n = cells.len();
        for (i, (text, style)) in cells.into_iter().enumerate() {
            let pad = if i + 1 < n {
                " ".repeat(widths[i].saturating_sub(text.chars().count()) + 2)
            } else {
                String::new()
            };
            line.push_str(&out.paint(style, &text));
            line.push_str(&pad);
        }
        line.trim_end().to_owned()
    };
    lines.push(render(
        headers
            .iter()
            .map(|h| ((*h).to_owned(), Style::Bold))
            .collect(),
    ));
    for row in rows {
        lines.push(render(
            row.iter()
                .take(cols)
                .map(|c| (c.text.clone(), c.style))
                .collect(),
        ));
    }
    lines.join("\n")
}

/// A byte count for people: `512 B`, `3.4 KiB`, `12.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_out() -> Out {
        Out {
            json: false,
            quiet: false,
            color_stdout: false,
            color_stderr: false,
            stderr_tty: false,
            stdout_tty: false,
        }
    }

    #[test]
    fn tables_align_on_unpainted_width() {
        let mut out = plain_out();
        out.color_stdout = true;
        let t = table(
            &out,
            &["NAME", "STATUS"],
            &[
                vec![Cell::plain("web"), Cell::status("healthy")],
                vec![Cell::plain("api-long"), Cell::status("failed")],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        // "api-long" is 8 wide, plus two spaces: the status column starts at 10 everywhere.
        assert!(lines[1].starts_with("web       \x1b[32mhealthy"), "{t:?}");
        assert!(lines[2].starts_with("api-long  \x1b[31mfailed"), "{t:?}");
    }

    #[test]
    fn control_characters_from_the_server_are_neutralised() {
        assert_eq!(clean("a\x1b[31mb\nc"), "a?[31mb?c");
        assert_eq!(Cell::plain("x\x07").text, "x?");
        assert_eq!(
            Cell::plain("last lines:\nfatal: x\n\nstarting").text,
            "last lines: | fatal: x | starting"
        );
        assert_eq!(indented("a\nb\x1b", "  "), "a\n  b?");
    }

    #[test]
    fn no_colour_without_a_terminal() {
        let out = plain_out();
        assert_eq!(out.paint(Style::Red, "x"), "x");
    }

    #[test]
    fn bytes_are_humane() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(3 * 1024 + 400), "3.4 KiB");
        assert_eq!(human_bytes(100 * 1024 * 1024), "100.0 MiB");
    }
}
