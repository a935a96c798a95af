//! Where the client finds its server and token: the client flags ([`GlobalArgs`]), the
//! environment and the config file, resolved into [`Settings`]. Nothing here talks to the
//! server (`login` checks a token with it, then saves through [`save`]).
//!
//! Precedence, highest first: `--url` / `--token`, `STACKYARD_URL` / `STACKYARD_TOKEN`, the
//! config file `$XDG_CONFIG_HOME/stackyard/config.toml` (else `~/.config/stackyard/config.toml`),
//! and for the URL the default `http://127.0.0.1:8700`. `--cacert` / `STACKYARD_CACERT` (extra
//! CA certificates for an `https://` server) come from the flag or the environment only.
//!
//! The file holds two string keys, so it is read and written by the small TOML subset below
//! (`key = "basic"` or `key = 'literal'` strings, comments, blank lines; other keys and tables
//! are ignored) rather than a TOML library: a full parser would be the largest dependency of
//! the client for two strings. The file is written atomically with mode 0600 in a 0700
//! directory, because it holds a bearer token.

use crate::error::{CliError, Context, Result};
use crate::output::{Out, clean};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The exit-code table, shown at the end of `stackyard --help` (and in the README).
pub const EXIT_CODES_HELP: &str = "\
Client commands read the server URL and token from --url/--token, else STACKYARD_URL/STACKYARD_TOKEN,
else the file written by `stackyard login` ($XDG_CONFIG_HOME/stackyard/config.toml); the default URL
is http://127.0.0.1:8700. An https:// server is checked against the system's CA certificates plus
those of --cacert FILE / STACKYARD_CACERT.

Exit codes of client commands:
  0  success (deploy/redeploy: the release is live and every service healthy)
  1  other errors: invalid request (400), unauthorized (401), unreadable local files, a server
     TLS certificate that is not trusted
  2  usage: bad arguments or flags
  3  not found (404): no such stack, service or env version
  4  conflict or precondition (409, 412, 422): e.g. --if-version no longer matches
  5  server or network: 5xx, 429 after 3 retries, connection failures, a deploy that failed";

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = EXIT_CODES_HELP, next_help_heading = "Client options")]
pub struct GlobalArgs {
    /// Machine-readable output: one JSON document (JSON lines for streams), no colour, no progress.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only what was asked for: no progress or notes (warnings and errors still go to stderr).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Server URL for client commands [default: STACKYARD_URL, the saved login, http://127.0.0.1:8700].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token for client commands [default: STACKYARD_TOKEN, the saved login]. Prefer
    /// `stackyard login` reading stdin: a token on the command line shows in the process list.
    #[arg(long, global = true, value_name = "TOKEN", value_parser = parse_token_arg)]
    pub token: Option<Token>,
    /// PEM CA certificates an https:// server's certificate may chain to, besides the system's
    /// [default: STACKYARD_CACERT].
    #[arg(long, global = true, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// The server a client talks to when nothing else says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8700";

/// A bearer token. `Debug` is redacted and there is no `Display`, so it cannot end up in a
/// message by accident; [`Token::expose`] is called only to build the `Authorization` header
/// and to write the config file.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// `None` for an empty or blank token (an empty `STACKYARD_TOKEN` means "unset").
    pub fn new(s: &str) -> Option<Token> {
        let s = s.trim();
        (!s.is_empty()).then(|| Token(s.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// clap value parser for `--token`: keeps the value out of `GlobalArgs`' `Debug`.
pub fn parse_token_arg(s: &str) -> std::result::Result<Token, String> {
    Token::new(s).ok_or_else(|| "the token is empty".to_owned())
}

/// What the config file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileConfig {
    pub url: Option<String>,
    pub token: Option<Token>,
}

/// The settings a command runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub token: Option<Token>,
    /// `--cacert`: extra CA certificates (PEM) for an https:// server.
    pub cacert: Option<PathBuf>,
}

/// `$XDG_CONFIG_HOME/stackyard/config.toml`, else `$HOME/.config/stackyard/config.toml`.
/// A relative `XDG_CONFIG_HOME` is ignored, as the XDG spec says.
pub fn config_path() -> Result<PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = match xdg {
        Some(p) => p,
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|h| h.join(".config"))
            .ok_or_else(|| {
                CliError::other("cannot find a config directory: neither XDG_CONFIG_HOME nor HOME is set")
                    .with_hint("set XDG_CONFIG_HOME, or pass --url and --token (or STACKYARD_URL and STACKYARD_TOKEN)")
            })?,
    };
    Ok(base.join("stackyard").join("config.toml"))
}

/// The variable `name`, unless it is unset or blank (an empty variable means "unset").
pub fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `--cacert`, else `STACKYARD_CACERT`.
pub fn cacert(global: &GlobalArgs) -> Option<PathBuf> {
    global
        .cacert
        .clone()
        .or_else(|| env_nonempty("STACKYARD_CACERT").map(PathBuf::from))
}

/// Resolves URL and token by the precedence above. A missing config file is not an error; an
/// unreadable or malformed one is (silently ignoring it would send requests anonymously).
pub fn resolve(global: &GlobalArgs, out: &Out) -> Result<Settings> {
    let from_flags_and_env = (
        global.url.clone().or_else(|| env_nonempty("STACKYARD_URL")),
        global
            .token
            .clone()
            .or_else(|| env_nonempty("STACKYARD_TOKEN").and_then(|t| Token::new(&t))),
    );
    let file = match from_flags_and_env {
        (Some(_), Some(_)) => FileConfig::default(),
        _ => match config_path() {
            Ok(path) => load(&path, out)?,
            // No HOME: fine as long as nothing needed the file.
            Err(_) => FileConfig::default(),
        },
    };
    let url = from_flags_and_env
        .0
        .or(file.url)
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    Ok(Settings {
        url: normalize_url(&url)?,
        token: from_flags_and_env.1.or(file.token),
        cacert: cacert(global),
    })
}

/// Checks a server URL (`http://` or `https://`) and drops trailing slashes.
pub fn normalize_url(raw: &str) -> Result<String> {
    let trimmed = raw.trim().trim_end_matches('/');
    let bad = || {
        CliError::usage(format!(
            "the server URL {:?} is not an http:// or https:// URL",
            clean(trimmed)
        ))
        .with_hint(format!("use a URL like {DEFAULT_URL}"))
    };
    let parsed = reqwest::Url::parse(trimmed).map_err(|_| bad())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(bad());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad());
    }
    Ok(trimmed.to_owned())
}

/// Reads the config file; a missing file is an empty config.
pub fn load(path: &Path, out: &Out) -> Result<FileConfig> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => {
            return Err(CliError::other(format!(
                "cannot read the config file {}: {e}",
                path.display()
            )));
        }
    };
    warn_if_shared(path, out);
    parse(&text).map_err(|e| {
        CliError::other(format!(
            "the config file {} is not valid: {e}",
            path.display()
        ))
        .with_hint("fix it, or delete it and run `stackyard login` again")
    })
}

#[cfg(unix)]
fn warn_if_shared(path: &Path, out: &Out) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        out.warn(&format!(
            "{} holds an API token but other users can read it; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path, _out: &Out) {}

/// Parses the config subset. Errors name the line, never its content: it may hold the token.
pub fn parse(text: &str) -> std::result::Result<FileConfig, String> {
    let mut cfg = FileConfig::default();
    let mut in_table = false;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            // Keys of tables belong to later versions; ours are top-level.
            in_table = true;
            continue;
        }
        let Some((key, rest)) = line.split_once('=') else {
            return Err(format!("line {n} is not `key = \"value\"`"));
        };
        let key = key.trim().trim_matches('"');
        let (value, tail) = parse_string(rest.trim_start())
            .ok_or_else(|| format!("line {n}: the value of `{key}` is not a quoted string"))?;
        let tail = tail.trim();
        if !(tail.is_empty() || tail.starts_with('#')) {
            return Err(format!(
                "line {n}: unexpected text after the value of `{key}`"
            ));
        }
        if in_table {
            continue;
        }
        match key {
            "url" => cfg.url = Some(value),
            "token" => cfg.token = Token::new(&value),
            _ => {}
        }
    }
    Ok(cfg)
}

/// A TOML basic (`"…"`, with escapes) or literal (`'…'`) string at the start of `s`; returns
/// the value and the rest of the line.
fn parse_string(s: &str) -> Option<(String, &str)> {
    let mut chars = s.char_indices();
    let (_, quote) = chars.next()?;
    let mut value = String::new();
    match quote {
        '\'' => {
            for (i, c) in chars {
                if c == '\'' {
                    return Some((value, &s[i + 1..]));
                }
                value.push(c);
            }
            None
        }
        '"' => {
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => return Some((value, &s[i + 1..])),
                    '\\' => {
                        let (_, e) = chars.next()?;
                        match e {
                            '"' => value.push('"'),
                            '\\' => value.push('\\'),
                            'n' => value.push('\n'),
                            't' => value.push('\t'),
                            'r' => value.push('\r'),
                            'b' => value.push('\u{8}'),
                            'f' => value.push('\u{c}'),
                            'u' | 'U' => {
                                let len = if e == 'u' { 4 } else { 8 };
                                let mut hex = String::new();
                                for _ in 0..len {
                                    hex.push(chars.next()?.1);
                                }
                                let cp = u32::from_str_radix(&hex, 16).ok()?;
                                value.push(char::from_u32(cp)?);
                            }
                            _ => return None,
                        }
                    }
                    c => value.push(c),
                }
            }
            None
        }
        _ => None,
    }
}

/// A TOML basic string for `s`.
fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            c if c.is_control() => q.push_str(&format!("\\u{:04X}", c as u32)),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

pub fn render(cfg: &FileConfig) -> String {
    let mut s = String::from("# The stackyard client's settings, written by `stackyard login`.\n");
    if let Some(u) = &cfg.url {
        s.push_str(&format!("url = {}\n", quote(u)));
    }
    if let Some(t) = &cfg.token {
        s.push_str(&format!("token = {}\n", quote(t.expose())));
    }
    s
}

/// Writes the config atomically: a private temporary file in the same directory, fsync,
/// rename. The token is never readable by others, not even for a moment.
pub fn save(path: &Path, cfg: &FileConfig) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| CliError::other("the config path has no directory"))?;
    create_private_dir(dir).context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".config.toml.")
        .tempfile_in(dir)
        .context(|| format!("cannot write in {}", dir.display()))?;
    // tempfile creates files with mode 0600 on Unix; set it anyway so the intent is explicit.
    set_private(tmp.as_file()).context(|| "cannot restrict the config file's mode".into())?;
    tmp.write_all(render(cfg).as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| CliError::other(format!("cannot write {}: {}", path.display(), e.error)))?;
    Ok(())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn set_private(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
}

#[cfg(not(unix))]
fn set_private(_f: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_the_toml_subset() {
        let cfg = FileConfig {
            url: Some("http://127.0.0.1:8700".into()),
            token: Token::new("sy_ab\"c\\d"),
        };
        let text = render(&cfg);
        assert_eq!(parse(&text).unwrap(), cfg);
    }

    #[test]
    fn comments_literal_strings_escapes_and_unknown_keys_are_understood() {
        let text = "# hi\n\nurl = 'http://x:1' # trailing\ntoken = \"sy_\\u0041\"\nother = \"z\"\n[later]\nurl = \"http://ignored\"\n";
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.url.as_deref(), Some("http://x:1"));
        assert_eq!(cfg.token.unwrap().expose(), "sy_A");
    }

    #[test]
    fn errors_name_the_line_but_never_echo_the_content() {
        let e = parse("url = \"http://x\"\ntoken = sy_secretvalue\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("secretvalue"), "{e}");
        let e = parse("sy_secretvalue\n").unwrap_err();
        assert!(!e.contains("secretvalue"), "{e}");
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = Token::new("sy_secret").unwrap();
        assert_eq!(format!("{t:?}"), "Token(***)");
        assert!(Token::new("   ").is_none());
    }

    #[test]
    fn urls_are_checked_and_trimmed() {
        assert_eq!(
            normalize_url("http://127.0.0.1:8700/").unwrap(),
            "http://127.0.0.1:8700"
        );
        assert!(normalize_url("ftp://x").is_err());
        assert!(normalize_url("not a url").is_err());
        assert_eq!(
            normalize_url("https://example.com/").unwrap(),
            "https://example.com"
        );
    }

    #[cfg(unix)]
    #[test]
    fn saved_config_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stackyard").join("config.toml");
        let cfg = FileConfig {
            url: Some("http://h:1".into()),
            token: Token::new("sy_x"),
        };
        save(&path, &cfg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let out = Out::new(true, true);
        assert_eq!(load(&path, &out).unwrap(), cfg);
        // Saving again replaces the file and keeps it private.
        save(&path, &cfg).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
