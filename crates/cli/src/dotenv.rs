//! `.env` files for `env set --from-file`: `KEY=value` lines, optionally prefixed by `export`,
//! `#` comments (whole lines, or after whitespace in an unquoted value), blank lines, and
//! values in single quotes (literal) or double quotes (escapes `\n \r \t \" \\ \$`), either of
//! which may span lines. No `${VAR}` expansion: values are taken as written.
//!
//! Errors name the line and the key, never the value: a `.env` file holds secrets.

/// One `KEY=value` entry and the line it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub line: usize,
}

pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = i + 1;
        let raw = lines[i].trim_start_matches('\u{feff}').trim();
        i += 1;
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let raw = raw
            .strip_prefix("export")
            .filter(|r| r.starts_with([' ', '\t']))
            .map_or(raw, str::trim_start);
        let Some((key, rest)) = raw.split_once('=') else {
            return Err(format!("line {start}: expected KEY=VALUE"));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(format!("line {start}: expected KEY=VALUE"));
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some(q @ ('"' | '\'')) => {
                // The value may continue on the following lines until its closing quote.
                let mut buf = rest[1..].to_owned();
                let (value, tail) = loop {
                    if let Some(done) = close_quote(&buf, q) {
                        break done;
                    }
                    if i >= lines.len() {
                        return Err(format!(
                            "line {start}: the value of {key} has no closing {q}"
                        ));
                    }
                    buf.push('\n');
                    buf.push_str(lines[i]);
                    i += 1;
                };
                let tail = tail.trim();
                if !(tail.is_empty() || tail.starts_with('#')) {
                    return Err(format!(
                        "line {start}: unexpected text after the quoted value of {key}"
                    ));
                }
                value
            }
            _ => {
                // An unquoted value ends at a comment that follows whitespace.
                let mut end = rest.len();
                let bytes = rest.as_bytes();
                for (j, &b) in bytes.iter().enumerate() {
                    if b == b'#' && j > 0 && (bytes[j - 1] == b' ' || bytes[j - 1] == b'\t') {
                        end = j;
                        break;
                    }
                }
                rest[..end].trim_end().to_owned()
            }
        };
        out.push(Entry {
            key: key.to_owned(),
            value,
            line: start,
        });
    }
    Ok(out)
}

/// If `s` (the text after an opening quote) holds the closing `q`, the unescaped value and
/// what follows the quote.
fn close_quote(s: &str, q: char) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == q {
            return Some((value, &s[i + 1..]));
        }
        if c == '\\' && q == '"' {
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 'r')) => value.push('\r'),
                Some((_, 't')) => value.push('\t'),
                Some((_, e @ ('"' | '\\' | '$'))) => value.push(e),
                Some((_, other)) => {
                    value.push('\\');
                    value.push(other);
                }
                None => return None,
            }
            continue;
        }
        value.push(c);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Vec<(String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.value))
            .collect()
    }

    #[test]
    fn the_usual_forms() {
        let text = "\
# comment
export A=1
B = two words  # trailing comment
C='single # not a comment'
D=\"line\\nbreak \\\"q\\\" \\$HOME\"
E=url#fragment
F=\"multi
line\"
  G=spaced  

H='x' # ok
";
        assert_eq!(
            kv(text),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "single # not a comment".into()),
                ("D".into(), "line\nbreak \"q\" $HOME".into()),
                ("E".into(), "url#fragment".into()),
                ("F".into(), "multi\nline".into()),
                ("G".into(), "spaced".into()),
                ("H".into(), "x".into()),
            ]
        );
    }

    #[test]
    fn empty_values_are_returned_for_the_caller_to_judge() {
        assert_eq!(
            kv("A=\nB=\"\"\n"),
            vec![("A".into(), "".into()), ("B".into(), "".into())]
        );
    }

    #[test]
    fn line_numbers_follow_multiline_values() {
        let e = parse("A=\"x\ny\"\nB=1\n").unwrap();
        assert_eq!(e[1].line, 3);
    }

    #[test]
    fn errors_never_contain_values() {
        for text in [
            "A=\"s3cretvalue\n",
            "A='s3cretvalue' trailing\n",
            "s3cretvalue\n",
            "A B=s3cretvalue\n",
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.starts_with("line 1"), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }
}
