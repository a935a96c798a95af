//! The stack manifest (`stackyard.yaml`, or `instant.yaml` for compatibility): parsing hostile
//! YAML within fixed resource limits, validating it into [`Manifest`], and resolving
//! `service://NAME` references in env values.
//!
//! Parsing happens in two steps. The YAML is first read into a loose tree (`Node`) under a
//! tight [`serde_saphyr::Budget`], so that unknown keys can be reported as warnings instead of
//! failing a derived struct, and so that every rule can name the service, key and line it is
//! about. The tree is then validated into typed values.

use crate::ids::{EnvKey, ServiceName, escape_for_message};
use crate::needs::Need;
use crate::resource::ResourceKind;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::budget::BudgetBreach;
use serde_saphyr::{
    Budget, DuplicateKeyPolicy, ExternalMessageSource, NonFiniteFloatPolicy, Options, Spanned,
    granit_parser,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

/// The largest manifest accepted, in bytes. A real manifest is a few KiB; checking the length
/// first bounds the work of everything after it.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;
/// The most services one stack may declare.
pub const MAX_SERVICES: usize = 32;
/// The port a service gets when the manifest does not say.
pub const DEFAULT_PORT: u16 = 8080;
/// The deepest nesting of mappings and sequences accepted. A valid manifest needs five levels;
/// the margin is for unknown keys, which may hold anything.
pub const MAX_DEPTH: usize = 32;
/// The prefix of an env value that refers to another service's address.
pub const SERVICE_SCHEME: &str = "service://";

/// A validated manifest.
///
/// Invariants: `services` holds 1..=[`MAX_SERVICES`] entries in document order with distinct
/// names; every `service://NAME` env value names one of them. `warnings` are human sentences
/// for the response `note` (unknown keys, unsupported `needs`, reference cycles).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub services: Vec<ServiceSpec>,
    pub warnings: Vec<String>,
}

/// One service of a [`Manifest`].
///
/// Invariants: `port` is in 1..=65535 (default [`DEFAULT_PORT`]); `health`, when set, starts
/// with `/` and holds no whitespace or control characters; every `env` key is a valid
/// [`EnvKey`]; no string field contains NUL. `command` is kept as written (the start-command
/// resolver trims it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: ServiceName,
    /// The directory the CLI packs; the server ignores it.
    pub build: Option<String>,
    pub port: u16,
    pub expose: bool,
    pub command: Option<String>,
    /// A prebuilt image the service runs instead of a tarball (Stackyard extension; only
    /// runtimes that run images accept it).
    pub image: Option<String>,
    pub health: Option<String>,
    /// The resources the service is granted (`crate::needs`), in the manifest's order.
    pub needs: Vec<Need>,
    pub env: BTreeMap<String, String>,
}

/// The longest `image:` reference accepted (registry, path, tag and digest fit well inside).
const MAX_IMAGE_LEN: usize = 255;

/// Why a manifest was rejected. The message is one sentence naming the service, key or field
/// (and line when known); it never contains an env value, since those may be secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Anything wrong with the manifest other than an env key's spelling.
    #[error("{0}")]
    Invalid(String),
    /// A `needs` entry that is neither a resource token nor a kind (`postgres`, `redis`,
    /// `{kind, as}`).
    #[error("{0}")]
    InvalidToken(String),
    /// An env key that is not a valid [`EnvKey`]. `key` is truncated for display.
    #[error("{message}")]
    InvalidEnvKey {
        service: String,
        key: String,
        message: String,
    },
}

impl ManifestError {
    /// The API error code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestError::Invalid(_) => "invalid_manifest",
            ManifestError::InvalidEnvKey { .. } => "invalid_env_key",
            ManifestError::InvalidToken(_) => "invalid_token",
        }
    }
}

fn invalid(message: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(message.into())
}

impl Manifest {
    /// Parses and validates manifest text. Never panics; input larger than
    /// [`MAX_MANIFEST_BYTES`], deeper than [`MAX_DEPTH`], or expanding aliases beyond small
    /// fixed limits is rejected before it can cost much time or memory.
    ///
    /// Scalars keep their spelling: `VERSION: 1.10` gives `"1.10"`, `DEBUG: TRUE` gives
    /// `"TRUE"`. Booleans are YAML 1.2's only (`yes`/`on` are strings). An env entry with no
    /// value (`KEY:` or `KEY: null`) is an error rather than an empty string, because the
    /// reader can't tell which was meant. A service with no settings may be written `web:` or
    /// `web: {}`.
    pub fn parse(yaml: &str) -> Result<Manifest, ManifestError> {
        if yaml.len() > MAX_MANIFEST_BYTES {
            return Err(invalid(format!(
                "the manifest is {} bytes, more than the limit of {} KiB",
                yaml.len(),
                MAX_MANIFEST_BYTES / 1024
            )));
        }
        if yaml.trim().is_empty() {
            return Err(invalid(
                "the manifest is empty; it needs a `services:` mapping with at least one service",
            ));
        }
        let root: Spanned<Node> = serde_saphyr::from_str_with_options(yaml, parser_options())
            .map_err(|e| yaml_error(&e))?;
        Validator {
            src: yaml,
            warnings: Vec::new(),
        }
        .manifest(&root)
    }

    /// The service called `name`, if declared.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name.as_str() == name)
    }
}

/// Splits a `service://NAME` or `service://NAME/path` value into `NAME` and the suffix (`""` or
/// starting with `/`). `None` when the value is not a service reference.
pub fn parse_service_ref(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(SERVICE_SCHEME)?;
    Some(match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    })
}

/// Replaces every value of the form `service://NAME[/path]` with `address_of(NAME)` followed by
/// the path. Values that are not references, and references `address_of` does not know, are
/// copied unchanged (a validated manifest has no unknown references).
pub fn resolve_service_refs(
    env: &BTreeMap<String, String>,
    address_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| {
            let resolved = parse_service_ref(v)
                .and_then(|(name, suffix)| address_of(name).map(|addr| format!("{addr}{suffix}")));
            (k.clone(), resolved.unwrap_or_else(|| v.clone()))
        })
        .collect()
}

fn parser_options() -> Options {
    // A manifest is a few dozen nodes. Every limit is far above that and far below what could
    // hurt: with the 256 KiB text cap, the remaining amplifier is alias replay, which the
    // alias and replay limits bound to a few thousand nodes.
    let mut budget = Budget::default();
    budget.max_reader_input_bytes = Some(MAX_MANIFEST_BYTES);
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_documents = 1;
    budget.max_events = 200_000;
    budget.max_nodes = 100_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_merge_keys = 256;
    budget.max_recorded_anchor_events = 20_000;
    budget.max_recorded_anchor_bytes = 1024 * 1024;
    budget.max_total_scalar_bytes = 2 * MAX_MANIFEST_BYTES;
    budget.max_total_comment_bytes = MAX_MANIFEST_BYTES;

    let mut options = Options::default();
    options.budget = Some(budget);
    options.alias_limits.max_total_replayed_events = 20_000;
    options.alias_limits.max_replay_stack_depth = 8;
    options.alias_limits.max_alias_expansions_per_anchor = 500;
    options.duplicate_keys = DuplicateKeyPolicy::Error;
    options.emit_comments = false;
    // `yes`/`on` stay strings: an env value `on` should reach the app as "on".
    options.strict_booleans = true;
    // `.inf` as a string rather than an error that would quote the value back.
    options.non_finite_float_policy = NonFiniteFloatPolicy::AsString;
    // A custom tag (`!Ref x`) means the author expects something we don't do; say so.
    options.reject_unsupported_tags = true;
    // Snippets quote the source around an error, which may be an env value (a secret).
    options.with_snippet = false;
    options
}

/// Turns a YAML error into one sentence. Only messages known not to quote values are passed
/// through; budget and alias limits get their own wording.
fn yaml_error(err: &serde_saphyr::Error) -> ManifestError {
    use serde_saphyr::Error as E;
    let at = err
        .location()
        .map(|l| location_suffix(l.line(), l.column()))
        .unwrap_or_default();
    let sentence = match err {
        // The alias counters trip wherever the scan happens to be, which is no help to a reader.
        E::Budget { breach, .. } if !matches!(breach, BudgetBreach::Depth { .. }) => {
            return invalid(budget_sentence(breach));
        }
        E::Budget { breach, .. } => budget_sentence(breach),
        // The scanner reads flow collections ahead of the budget check, so `[[[[…` trips the
        // parser's own nesting limit first.
        E::ExternalMessage { source, .. }
            if matches!(
                source.as_ref(),
                ExternalMessageSource::Parser(scan)
                    if matches!(scan.kind(), granit_parser::ErrorKind::RecursionLimitExceeded)
            ) =>
        {
            budget_sentence(&BudgetBreach::Depth {
                depth: MAX_DEPTH + 1,
            })
        }
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::RecursiveReferencesRequireWeakTypes { .. } => {
            "the manifest expands aliases (`*name`) too much".to_owned()
        }
        E::DuplicateMappingKey { key: Some(k), .. } => format!(
            "the key `{}` appears twice in the same mapping",
            escape_for_message(k)
        ),
        E::DuplicateMappingKey { key: None, .. } => {
            "a key appears twice in the same mapping".to_owned()
        }
        E::MultipleDocuments { .. } => {
            "the manifest must be a single YAML document (remove the extra `---`)".to_owned()
        }
        E::AliasError { error, .. } => return yaml_error(error),
        _ => {
            // The library's own text (with its location) says what and where; with snippets
            // off and the options above, none of the remaining kinds quote a scalar's value.
            let text = err.to_string();
            let shown = match text.char_indices().nth(200) {
                Some((cut, _)) => format!("{}…", &text[..cut]),
                None => text,
            };
            return invalid(format!("the manifest is not valid YAML: {shown}"));
        }
    };
    invalid(format!("{sentence}{at}"))
}

fn budget_sentence(breach: &BudgetBreach) -> String {
    match breach {
        BudgetBreach::Depth { .. } => {
            format!("the manifest nests mappings or lists deeper than {MAX_DEPTH} levels")
        }
        BudgetBreach::Aliases { .. }
        | BudgetBreach::Anchors { .. }
        | BudgetBreach::AliasAnchorRatio { .. }
        | BudgetBreach::RecordedAnchorEvents { .. }
        | BudgetBreach::RecordedAnchorBytes { .. } => {
            "the manifest uses too many anchors or aliases (`&name`, `*name`)".to_owned()
        }
        BudgetBreach::Documents { .. } => {
            "the manifest must be a single YAML document (remove the extra `---`)".to_owned()
        }
        BudgetBreach::MergeKeys { .. } => "the manifest uses too many merge keys (`<<`)".to_owned(),
        BudgetBreach::ScalarBytes { .. } => format!(
            "the manifest expands to more than {} KiB of text (an alias counts each time it is used)",
            2 * MAX_MANIFEST_BYTES / 1024
        ),
        _ => "the manifest is too large or too complex".to_owned(),
    }
}

fn location_suffix(line: u64, column: u64) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (l, 0) => format!(" (line {l})"),
        (l, c) => format!(" (line {l}, column {c})"),
    }
}

/// A YAML node as read, before any rule is applied. Scalars arrive typed; the source spelling
/// of plain numbers and booleans is recovered from the node's span (see [`Validator::text`]).
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "empty",
            Node::Bool(_) => "a boolean",
            Node::Unsigned(_) | Node::Signed(_) | Node::Float(_) => "a number",
            Node::Str(_) => "text",
            Node::Seq(_) => "a list",
            Node::Map(_) => "a mapping",
        }
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Node, E> {
        Err(E::custom("binary values are not supported in a manifest"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key()? {
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

fn line_of(node: &Spanned<Node>) -> String {
    location_suffix(node.referenced.line(), 0)
}

/// Applies the manifest rules to the loose tree, collecting warnings on the way.
struct Validator<'a> {
    src: &'a str,
    warnings: Vec<String>,
}

impl Validator<'_> {
    /// The source spelling of a plain scalar, when the span points at something that looks
    /// like one (an alias's span points at the anchored node, which is what we want).
    fn raw(&self, node: &Spanned<Node>) -> Option<&str> {
        let span = node.defined.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let raw = self.src.get(start..start.checked_add(len)?)?;
        let plausible = !raw.is_empty()
            && raw.len() <= 256
            && !raw.starts_with(['!', '&', '*', '"', '\'', '[', '{', '|', '>'])
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        plausible.then_some(raw)
    }

    /// The text of a scalar: strings as they are, numbers and booleans as written. `None` for
    /// null and collections.
    fn text(&self, node: &Spanned<Node>) -> Option<String> {
        let canonical = match &node.value {
            Node::Str(s) => return Some(s.clone()),
            Node::Null | Node::Seq(_) | Node::Map(_) => return None,
            Node::Bool(b) => b.to_string(),
            Node::Unsigned(n) => n.to_string(),
            Node::Signed(n) => n.to_string(),
            Node::Float(f) => f.to_string(),
        };
        Some(self.raw(node).map_or(canonical, str::to_owned))
    }

    /// A mapping key as text. A plain `null`/`~` key is spelled as written, so a service
    /// named `null` works like any other DNS label.
    fn key(&self, node: &Spanned<Node>) -> Option<String> {
        match node.value {
            Node::Null => self.raw(node).map(str::to_owned),
            _ => self.text(node),
        }
    }

    fn manifest(mut self, root: &Spanned<Node>) -> Result<Manifest, ManifestError> {
        let entries = match &root.value {
            Node::Map(entries) => entries,
            Node::Null => {
                return Err(invalid(
                    "the manifest is empty; it needs a `services:` mapping with at least one service",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "the manifest must be a mapping with a `services:` key, but it is {}",
                    other.kind()
                )));
            }
        };
        let mut services = None;
        for (k, v) in entries {
            match self.key(k).as_deref() {
                Some("services") => services = Some(v),
                Some(other) => self.warnings.push(format!(
                    "unknown top-level key `{}` was ignored",
                    escape_for_message(other)
                )),
                None => self.warnings.push(format!(
                    "a top-level key that is {} was ignored{}",
                    k.value.kind(),
                    line_of(k)
                )),
            }
        }
        let services = services.ok_or_else(|| {
            invalid("the manifest has no `services:` key; declare at least one service under it")
        })?;
        let declared = match &services.value {
            Node::Map(entries) if !entries.is_empty() => entries,
            Node::Map(_) | Node::Null => {
                return Err(invalid(
                    "`services` is empty; declare at least one service under it",
                ));
            }
            other => {
                return Err(invalid(format!(
                    "`services` must be a mapping from service name to settings, but it is {}{}",
                    other.kind(),
                    line_of(services)
                )));
            }
        };
        if declared.len() > MAX_SERVICES {
            return Err(invalid(format!(
                "the manifest declares {} services; a stack may have at most {MAX_SERVICES}",
                declared.len()
            )));
        }

        let mut specs: Vec<ServiceSpec> = Vec::with_capacity(declared.len());
        for (k, v) in declared {
            let raw_name = self.key(k).ok_or_else(|| {
                invalid(format!(
                    "a service name is {}, but it must be text{}",
                    k.value.kind(),
                    line_of(k)
                ))
            })?;
            let name =
                ServiceName::parse(&raw_name).map_err(|e| invalid(format!("{e}{}", line_of(k))))?;
            if specs.iter().any(|s| s.name == name) {
                return Err(invalid(format!(
                    "service `{name}` is declared twice{}",
                    line_of(k)
                )));
            }
            let spec = self.service(name, v)?;
            specs.push(spec);
        }

        check_references(&specs)?;
        self.warnings.extend(cycle_warnings(&specs));
        Ok(Manifest {
            services: specs,
            warnings: self.warnings,
        })
    }

    fn service(
        &mut self,
        name: ServiceName,
        body: &Spanned<Node>,
    ) -> Result<ServiceSpec, ManifestError> {
        let mut spec = ServiceSpec {
            name,
            build: None,
            port: DEFAULT_PORT,
            expose: false,
            command: None,
            image: None,
            health: None,
            needs: Vec::new(),
            env: BTreeMap::new(),
        };
        let entries = match &body.value {
            Node::Map(entries) => entries.as_slice(),
            Node::Null => &[],
            other => {
                return Err(invalid(format!(
                    "service `{}` must be a mapping of settings (like `port: 8080`), but it is {}{}",
                    spec.name,
                    other.kind(),
                    line_of(body)
                )));
            }
        };
        for (k, v) in entries {
            let Some(key) = self.key(k) else {
                return Err(invalid(format!(
                    "a key in service `{}` is {}, but keys must be text{}",
                    spec.name,
                    k.value.kind(),
                    line_of(k)
                )));
            };
            let name = spec.name.clone();
            let svc = name.as_str();
            match key.as_str() {
                "build" => spec.build = self.optional_text(svc, "build", v)?,
                "command" => spec.command = self.optional_text(svc, "command", v)?,
                "image" => {
                    spec.image = self.optional_text(svc, "image", v)?;
                    if let Some(image) = &spec.image {
                        let ok = !image.is_empty()
                            && image.len() <= MAX_IMAGE_LEN
                            && !image.chars().any(|c| c.is_whitespace() || c.is_control());
                        if !ok {
                            return Err(invalid(format!(
                                "`image` of service `{svc}` must be an image reference like `nginx:1.27` (no spaces, at most {MAX_IMAGE_LEN} characters){}",
                                line_of(v)
                            )));
                        }
                    }
                }
                "health" => {
                    spec.health = self.optional_text(svc, "health", v)?;
                    if let Some(h) = &spec.health {
                        let ok = h.starts_with('/')
                            && !h.chars().any(|c| c.is_whitespace() || c.is_control());
                        if !ok {
                            return Err(invalid(format!(
                                "`health` of service `{svc}` must be an HTTP path starting with `/`, like `/healthz`{}",
                                line_of(v)
                            )));
                        }
                    }
                }
                "port" => spec.port = self.port(svc, v)?,
                "expose" => {
                    spec.expose = match v.value {
                        Node::Bool(b) => b,
                        Node::Null => false,
                        _ => {
                            return Err(invalid(format!(
                                "`expose` of service `{svc}` must be true or false{}",
                                line_of(v)
                            )));
                        }
                    }
                }
                "needs" => spec.needs = self.needs(svc, v)?,
                "env" => spec.env = self.env(svc, v)?,
                other => self.warnings.push(format!(
                    "unknown key `{}` in service `{svc}` was ignored",
                    escape_for_message(other)
                )),
            }
        }
        Ok(spec)
    }

    fn optional_text(
        &self,
        svc: &str,
        field: &str,
        v: &Spanned<Node>,
    ) -> Result<Option<String>, ManifestError> {
        if let Node::Null = v.value {
            return Ok(None);
        }
        let text = self.text(v).ok_or_else(|| {
            invalid(format!(
                "`{field}` of service `{svc}` must be text, but it is {}{}",
                v.value.kind(),
                line_of(v)
            ))
        })?;
        if text.contains('\0') {
            return Err(invalid(format!(
                "`{field}` of service `{svc}` contains a NUL character{}",
                line_of(v)
            )));
        }
        Ok(Some(text))
    }

    fn port(&self, svc: &str, v: &Spanned<Node>) -> Result<u16, ManifestError> {
        let n = match &v.value {
            Node::Null => return Ok(DEFAULT_PORT),
            Node::Unsigned(n) => Some(*n),
            // A quoted port is an easy slip and unambiguous.
            Node::Str(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.and_then(|n| u16::try_from(n).ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                invalid(format!(
                    "`port` of service `{svc}` must be a whole number from 1 to 65535{}",
                    line_of(v)
                ))
            })
    }

    fn needs(&self, svc: &str, v: &Spanned<Node>) -> Result<Vec<Need>, ManifestError> {
        let items = match &v.value {
            Node::Null => return Ok(Vec::new()),
            Node::Seq(items) => items,
            other => {
                return Err(invalid(format!(
                    "`needs` of service `{svc}` must be a list of resource tokens or kinds, but it is {}{}",
                    other.kind(),
                    line_of(v)
                )));
            }
        };
        items.iter().map(|item| self.need(svc, item)).collect()
    }

    /// One `needs` entry: a token, `postgres`, `redis`, or `{kind: postgres|redis, as: NAME}`.
    /// The entry itself is never echoed: a mistyped one may be a connection URL.
    fn need(&self, svc: &str, item: &Spanned<Node>) -> Result<Need, ManifestError> {
        let bad = |what: &str| {
            ManifestError::InvalidToken(format!(
                "an entry of `needs` in service `{svc}` {what}{}",
                line_of(item)
            ))
        };
        let Node::Map(entries) = &item.value else {
            let text = self.text(item).ok_or_else(|| {
                bad(&format!(
                    "is {}, not a resource token, `postgres` or `redis`",
                    item.value.kind()
                ))
            })?;
            return Need::parse_text(&text).ok_or_else(|| {
                bad("is neither a resource token (a lowercase UUID) nor `postgres` or `redis`")
            });
        };
        let mut kind = None;
        let mut env = None;
        for (k, v) in entries {
            match self.text(k).as_deref() {
                Some("kind") => {
                    kind = Some(
                        self.text(v)
                            .as_deref()
                            .and_then(ResourceKind::parse)
                            .ok_or_else(|| bad("has a `kind` other than `postgres` or `redis`"))?,
                    );
                }
                Some("as") => {
                    env = Some(
                        self.text(v)
                            .and_then(|t| EnvKey::parse(&t).ok())
                            .ok_or_else(|| bad("has an `as` that is not an env variable name"))?,
                    );
                }
                _ => return Err(bad("has a key other than `kind` and `as`")),
            }
        }
        let kind = kind.ok_or_else(|| bad("is a mapping without `kind`"))?;
        Ok(Need::Owned { kind, env })
    }

    fn env(&self, svc: &str, v: &Spanned<Node>) -> Result<BTreeMap<String, String>, ManifestError> {
        let entries = match &v.value {
            Node::Null => return Ok(BTreeMap::new()),
            Node::Map(entries) => entries,
            other => {
                return Err(invalid(format!(
                    "`env` of service `{svc}` must be a mapping from variable name to value, but it is {}{}",
                    other.kind(),
                    line_of(v)
                )));
            }
        };
        let mut env = BTreeMap::new();
        for (k, value) in entries {
            let raw_key = self.key(k).unwrap_or_default();
            let key = EnvKey::parse(&raw_key)
                .map_err(|_| {
                    let shown = escape_for_message(&raw_key);
                    ManifestError::InvalidEnvKey {
                        service: svc.to_owned(),
                        message: format!(
                            "env key `{shown}` in service `{svc}` is not valid: it must start with a letter or `_`, contain only letters, digits and `_`, and be at most {} bytes{}",
                            EnvKey::MAX_LEN,
                            line_of(k)
                        ),
                        key: shown,
                    }
                })?
                .into_string();
            // Messages below name the key and never the value: values may be secrets.
            let text = match &value.value {
                Node::Null => {
                    return Err(invalid(format!(
                        "env `{key}` in service `{svc}` has no value; write `{key}: \"\"` for an empty string{}",
                        line_of(value)
                    )));
                }
                Node::Seq(_) | Node::Map(_) => {
                    return Err(invalid(format!(
                        "env `{key}` in service `{svc}` must be a string, number or boolean, not {}{}",
                        value.value.kind(),
                        line_of(value)
                    )));
                }
                _ => self.text(value).unwrap_or_default(),
            };
            if text.contains('\0') {
                return Err(invalid(format!(
                    "env `{key}` in service `{svc}` contains a NUL character{}",
                    line_of(value)
                )));
            }
            if env.insert(key.clone(), text).is_some() {
                return Err(invalid(format!(
                    "env `{key}` in service `{svc}` is set twice{}",
                    line_of(k)
                )));
            }
        }
        Ok(env)
    }
}

fn check_references(specs: &[ServiceSpec]) -> Result<(), ManifestError> {
    for spec in specs {
        for (key, value) in &spec.env {
            let Some((target, _)) = parse_service_ref(value) else {
                continue;
            };
            if target.is_empty() {
                return Err(invalid(format!(
                    "env `{key}` in service `{}` is `service://` without a service name",
                    spec.name
                )));
            }
            if !specs.iter().any(|s| s.name.as_str() == target) {
                return Err(invalid(format!(
                    "env `{key}` in service `{}` refers to service `{}`, which this manifest does not declare",
                    spec.name,
                    escape_for_message(target)
                )));
            }
        }
    }
    Ok(())
}

/// One warning per group of services that reach each other through `service://` references
/// (a strongly connected component of two or more), showing one concrete cycle. A service
/// referring to itself is not a cycle worth reporting: it needs nobody else to start first.
fn cycle_warnings(specs: &[ServiceSpec]) -> Vec<String> {
    let n = specs.len();
    let index = |name: &str| specs.iter().position(|s| s.name.as_str() == name);
    let edges: Vec<BTreeSet<usize>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.env
                .values()
                .filter_map(|v| parse_service_ref(v).and_then(|(t, _)| index(t)))
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    // n <= 32, so a transitive closure is cheaper to read than Tarjan.
    let mut reach = vec![vec![false; n]; n];
    for (i, out) in edges.iter().enumerate() {
        for &j in out {
            reach[i][j] = true;
        }
    }
    for k in 0..n {
        let via = reach[k].clone();
        for row in reach.iter_mut() {
            if row[k] {
                for (cell, &through) in row.iter_mut().zip(&via) {
                    *cell |= through;
                }
            }
        }
    }
    let mut reported = vec![false; n];
    let mut warnings = Vec::new();
    for start in 0..n {
        if reported[start] || !reach[start][start] {
            continue;
        }
        let members: Vec<usize> = (0..n)
            .filter(|&j| reach[start][j] && reach[j][start])
            .collect();
        for &m in &members {
            reported[m] = true;
        }
        let path = shortest_cycle(start, &edges, &members);
        let shown: Vec<String> = path
            .iter()
            .map(|&i| format!("`{}`", specs[i].name))
            .collect();
        warnings.push(format!(
            "services refer to each other in a cycle ({}); this is allowed, but none of them can count on the others being up when it starts",
            shown.join(" → ")
        ));
    }
    warnings
}

/// The shortest path `start → … → start` through `members` (breadth-first, so the reported
/// cycle is the simplest one).
fn shortest_cycle(start: usize, edges: &[BTreeSet<usize>], members: &[usize]) -> Vec<usize> {
    let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut last = None;
    'search: while let Some(u) = queue.pop_front() {
        for &v in &edges[u] {
            if !members.contains(&v) {
                continue;
            }
            if v == start {
                last = Some(u);
                break 'search;
            }
            if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(v) {
                e.insert(u);
                queue.push_back(v);
            }
        }
    }
    let mut path = vec![start];
    let mut cur = last;
    while let Some(u) = cur {
        if u == start {
            break;
        }
        path.push(u);
        cur = prev.get(&u).copied();
    }
    path.push(start);
    // Collected walking backwards from the end of the cycle.
    let end = path.len() - 1;
    path[1..end].reverse();
    path
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::{Duration, Instant};

    fn ok(yaml: &str) -> Manifest {
        match Manifest::parse(yaml) {
            Ok(m) => m,
            Err(e) => panic!("expected {yaml:?} to parse, got: {e}"),
        }
    }

    fn err(yaml: &str) -> ManifestError {
        match Manifest::parse(yaml) {
            Ok(m) => panic!("expected {yaml:?} to be rejected, got {m:?}"),
            Err(e) => e,
        }
    }

    fn invalid_msg(yaml: &str) -> String {
        let e = err(yaml);
        assert_eq!(e.code(), "invalid_manifest", "{e}");
        e.to_string()
    }

    const SPEC_EXAMPLE: &str = r#"
services:
  api:
    build: ./api            # directory the CLI packs
    port: 3000
    expose: true
    command: "python3 app.py"
    health: /healthz
    needs: []
    env:
      LOG_LEVEL: info
      WEB_URL: service://web
  web:
    build: ./web
    expose: true
"#;

    #[test]
    fn spec_example_parses_with_defaults_and_no_warnings() {
        let m = ok(SPEC_EXAMPLE);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["api", "web"]);
        let api = m.service("api").unwrap();
        assert_eq!(api.build.as_deref(), Some("./api"));
        assert_eq!(api.port, 3000);
        assert!(api.expose);
        assert_eq!(api.command.as_deref(), Some("python3 app.py"));
        assert_eq!(api.health.as_deref(), Some("/healthz"));
        assert!(api.needs.is_empty());
        assert_eq!(api.env["LOG_LEVEL"], "info");
        assert_eq!(api.env["WEB_URL"], "service://web");
        let web = m.service("web").unwrap();
        assert_eq!(web.port, DEFAULT_PORT);
        assert_eq!(web.command, None);
        assert_eq!(web.health, None);
        assert!(web.env.is_empty());
        assert!(m.service("nope").is_none());
    }

    #[test]
    fn services_keep_document_order() {
        let m = ok("services:\n  zeta: {}\n  alpha: {}\n  mid: {}\n");
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn a_service_without_settings_gets_all_defaults() {
        let m = ok("services:\n  web:\n");
        let web = &m.services[0];
        assert_eq!((web.port, web.expose), (DEFAULT_PORT, false));
    }

    #[test]
    fn env_scalars_keep_their_spelling() {
        let m = ok(r#"
services:
  api:
    env:
      VERSION: 1.10
      DEBUG: TRUE
      OFF_SWITCH: off
      HEX: 0x1F
      ZIP: 01234
      BIG: 1e3
      NEG: -0
      INF: .inf
      QUOTED: "1.10"
      SINGLE: 'it''s'
      ANCHORED: &v 2.50
      ALIASED: *v
      EMPTY: ""
      TAGGED: !!str 007
      MULTI: |
        line one
        line two
"#);
        let env = &m.services[0].env;
        let expect = [
            ("VERSION", "1.10"),
            ("DEBUG", "TRUE"),
            ("OFF_SWITCH", "off"),
            ("HEX", "0x1F"),
            ("ZIP", "01234"),
            ("BIG", "1e3"),
            ("NEG", "-0"),
            ("INF", ".inf"),
            ("QUOTED", "1.10"),
            ("SINGLE", "it's"),
            ("ANCHORED", "2.50"),
            ("ALIASED", "2.50"),
            ("EMPTY", ""),
            ("TAGGED", "007"),
            ("MULTI", "line one\nline two\n"),
        ];
        for (k, v) in expect {
            assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
        }
    }

    #[test]
    fn env_keys_that_yaml_types_are_spelled_as_written() {
        let m = ok("services:\n  api:\n    env:\n      TRUE: a\n      NULL: b\n");
        let env = &m.services[0].env;
        assert_eq!(env["TRUE"], "a");
        assert_eq!(env["NULL"], "b");
    }

    #[test]
    fn env_key_errors_use_the_env_key_code_and_name_the_service() {
        for bad in ["1A", "A-B", "\"A B\"", "\"\"", "É"] {
            let e = err(&format!("services:\n  api:\n    env:\n      {bad}: x\n"));
            assert_eq!(e.code(), "invalid_env_key", "{bad}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("`api`"), "{msg}");
            match e {
                ManifestError::InvalidEnvKey { service, .. } => assert_eq!(service, "api"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn env_errors_never_echo_the_value() {
        let secret = "hunter2-very-secret";
        for yaml in [
            format!("services:\n  api:\n    env:\n      K: service://{secret}\n"),
            format!("services:\n  api:\n    env:\n      K: [\"{secret}\"]\n"),
            format!("services:\n  api:\n    env:\n      K: {{a: \"{secret}\"}}\n"),
            format!("services:\n  api:\n    env:\n      K: \"{secret}\\0\"\n"),
            format!("services:\n  api:\n    env:\n      K: \"{secret}\n"),
            format!("services:\n  api:\n    env:\n      K: \"{secret}\"\n      K: x\n"),
            format!("services:\n  api:\n    env:\n      K: !secret \"{secret}\"\n"),
        ] {
            let e = err(&yaml);
            let msg = e.to_string();
            // The service name in `service://NAME` is echoed on purpose; only values that are
            // not references could be secrets, so check the other shapes strictly.
            if !yaml.contains("service://") {
                assert!(!msg.contains("hunter2"), "{msg}");
            }
            assert_eq!(e.code(), "invalid_manifest", "{msg}");
        }
    }

    #[test]
    fn env_values_must_be_scalars_and_not_null() {
        let msg = invalid_msg("services:\n  api:\n    env:\n      K: [1, 2]\n");
        assert!(
            msg.contains("env `K` in service `api`") && msg.contains("a list"),
            "{msg}"
        );
        let msg = invalid_msg("services:\n  api:\n    env:\n      K: {a: 1}\n");
        assert!(msg.contains("a mapping"), "{msg}");
        let msg = invalid_msg("services:\n  api:\n    env:\n      K:\n");
        assert!(msg.contains("has no value"), "{msg}");
        let msg = invalid_msg("services:\n  api:\n    env:\n      K: ~\n");
        assert!(msg.contains("has no value"), "{msg}");
        let msg = invalid_msg("services:\n  api:\n    env:\n      K: \"a\\0b\"\n");
        assert!(msg.contains("NUL"), "{msg}");
        let msg = invalid_msg("services:\n  api:\n    env: [A, B]\n");
        assert!(msg.contains("`env` of service `api`"), "{msg}");
    }

    #[test]
    fn env_keys_equal_after_spelling_are_rejected() {
        for (a, b) in [("TRUE", "\"TRUE\""), ("NULL", "\"NULL\""), ("A", "\"A\"")] {
            let msg = invalid_msg(&format!(
                "services:\n  api:\n    env:\n      {a}: x\n      {b}: y\n"
            ));
            assert!(msg.contains("twice"), "{msg}");
        }
    }

    #[test]
    fn service_refs_must_name_declared_services() {
        let msg = invalid_msg("services:\n  api:\n    env:\n      U: service://nope\n");
        assert!(
            msg.contains("`nope`") && msg.contains("`api`") && msg.contains("`U`"),
            "{msg}"
        );
        let msg = invalid_msg("services:\n  api:\n    env:\n      U: service://\n");
        assert!(msg.contains("without a service name"), "{msg}");
        // Names are exact: case matters and a port is not part of the name.
        invalid_msg("services:\n  api: {}\n  web:\n    env:\n      U: service://API\n");
        invalid_msg("services:\n  api: {}\n  web:\n    env:\n      U: service://api:80\n");
        let m = ok(
            "services:\n  api: {}\n  web:\n    env:\n      U: service://api/v1/x?y=1\n      S: service://web\n      T: xservice://nope\n",
        );
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
    }

    #[test]
    fn reference_cycles_are_allowed_and_reported_once_per_cycle() {
        let m = ok(r#"
services:
  a:
    env: {B: "service://b"}
  b:
    env: {A: "service://a"}
  c:
    env: {D: "service://d"}
  d:
    env: {E: "service://e"}
  e:
    env: {C: "service://c", SELF: "service://e"}
  f:
    env: {F: "service://f", A: "service://a"}
"#);
        assert_eq!(m.warnings.len(), 2, "{:?}", m.warnings);
        assert!(
            m.warnings[0].contains("`a` → `b` → `a`"),
            "{}",
            m.warnings[0]
        );
        assert!(
            m.warnings[1].contains("`c` → `d` → `e` → `c`"),
            "{}",
            m.warnings[1]
        );
    }

    #[test]
    fn the_shortest_cycle_through_a_group_is_shown() {
        let m = ok(r#"
services:
  a: {env: {X: "service://b", Y: "service://c"}}
  b: {env: {X: "service://c"}}
  c: {env: {X: "service://a"}}
"#);
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert!(
            m.warnings[0].contains("`a` → `c` → `a`"),
            "{}",
            m.warnings[0]
        );
    }

    #[test]
    fn unknown_keys_are_warnings_naming_key_and_service() {
        let m = ok("version: 3\nservices:\n  api:\n    scale: x\n    replicas: 2\nextra: {}\n");
        assert_eq!(
            m.warnings,
            [
                "unknown top-level key `version` was ignored",
                "unknown top-level key `extra` was ignored",
                "unknown key `scale` in service `api` was ignored",
                "unknown key `replicas` in service `api` was ignored",
            ]
        );
    }

    #[test]
    fn image_names_a_prebuilt_image_and_must_be_a_reference() {
        let m = ok("services:\n  web:\n    image: nginx:1.27\n    port: 80\n");
        assert_eq!(m.services[0].image.as_deref(), Some("nginx:1.27"));
        assert!(m.warnings.is_empty());
        for bad in ["\"nginx latest\"", "\"\"", "[a]"] {
            let err = Manifest::parse(&format!("services:\n  web:\n    image: {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("`image` of service `web`"), "{bad}: {err}");
        }
    }

    #[test]
    fn echoed_keys_are_escaped_and_cut() {
        let m = ok("services:\n  api:\n    \"bad\\nkey\\u001b\": 1\n");
        assert_eq!(
            m.warnings,
            ["unknown key `bad\\nkey\\u{1b}` in service `api` was ignored"]
        );
        let long = "k".repeat(500);
        let m = ok(&format!("{long}: 1\nservices:\n  api: {{}}\n"));
        assert!(
            m.warnings[0].len() < 200 && m.warnings[0].contains('…'),
            "{:?}",
            m.warnings
        );
    }

    #[test]
    fn needs_are_tokens_kinds_or_named_kinds() {
        let token = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
        let m = ok(&format!(
            "services:\n  api:\n    needs: [{token}, postgres, redis, {{kind: postgres, as: ANALYTICS_DB_URL}}]\n  web:\n    needs: []\n"
        ));
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        assert_eq!(
            m.services[0].needs,
            [
                Need::Token(crate::ResourceToken::parse(token).unwrap()),
                Need::Owned {
                    kind: ResourceKind::Postgres,
                    env: None
                },
                Need::Owned {
                    kind: ResourceKind::Redis,
                    env: None
                },
                Need::Owned {
                    kind: ResourceKind::Postgres,
                    env: Some(EnvKey::parse("ANALYTICS_DB_URL").unwrap())
                },
            ]
        );
        let msg = invalid_msg("services:\n  api:\n    needs: postgres\n");
        assert!(msg.contains("`needs` of service `api`"), "{msg}");
        for bad in [
            "[[a]]",
            "[mysql]",
            "[\"postgres://u:secret@h/db\"]",
            "[{kind: mysql}]",
            "[{as: X}]",
            "[{kind: redis, as: 1X}]",
            "[{kind: redis, token: x}]",
        ] {
            let e = Manifest::parse(&format!("services:\n  api:\n    needs: {bad}\n")).unwrap_err();
            assert_eq!(e.code(), "invalid_token", "{bad}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn ports_are_whole_numbers_in_range() {
        assert_eq!(ok("services:\n  a:\n    port: 1\n").services[0].port, 1);
        assert_eq!(
            ok("services:\n  a:\n    port: 65535\n").services[0].port,
            65535
        );
        assert_eq!(
            ok("services:\n  a:\n    port: \"3000\"\n").services[0].port,
            3000
        );
        assert_eq!(
            ok("services:\n  a:\n    port:\n").services[0].port,
            DEFAULT_PORT
        );
        for bad in [
            "0",
            "65536",
            "-1",
            "80.5",
            "abc",
            "true",
            "[80]",
            "99999999999999999999",
        ] {
            let msg = invalid_msg(&format!("services:\n  a:\n    port: {bad}\n"));
            assert!(
                msg.contains("`port` of service `a`") && msg.contains("line 3"),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn expose_is_a_yaml_12_boolean() {
        assert!(ok("services:\n  a:\n    expose: true\n").services[0].expose);
        assert!(!ok("services:\n  a:\n    expose: False\n").services[0].expose);
        for bad in ["yes", "1", "\"true\"", "[true]"] {
            let msg = invalid_msg(&format!("services:\n  a:\n    expose: {bad}\n"));
            assert!(
                msg.contains("`expose` of service `a` must be true or false"),
                "{msg}"
            );
        }
    }

    #[test]
    fn health_must_be_a_path() {
        assert_eq!(
            ok("services:\n  a:\n    health: /ready?x=1\n").services[0]
                .health
                .as_deref(),
            Some("/ready?x=1")
        );
        for bad in ["healthz", "\"/a b\"", "\"/a\\nb\"", "[\"/x\"]", "http://x/"] {
            let msg = invalid_msg(&format!("services:\n  a:\n    health: {bad}\n"));
            assert!(msg.contains("`health` of service `a`"), "{bad}: {msg}");
        }
    }

    #[test]
    fn text_fields_accept_scalars_and_reject_collections() {
        let m = ok("services:\n  a:\n    command: true\n    build: 2024\n");
        assert_eq!(m.services[0].command.as_deref(), Some("true"));
        assert_eq!(m.services[0].build.as_deref(), Some("2024"));
        let msg = invalid_msg("services:\n  a:\n    command: [python, app.py]\n");
        assert!(
            msg.contains("`command` of service `a` must be text, but it is a list"),
            "{msg}"
        );
        let msg = invalid_msg("services:\n  a:\n    command: \"x\\0y\"\n");
        assert!(msg.contains("NUL"), "{msg}");
    }

    #[test]
    fn service_names_are_dns_labels() {
        let m = ok("services:\n  \"0\": {}\n  a-1: {}\n  null: {}\n");
        let names: Vec<&str> = m.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["0", "a-1", "null"]);
        for bad in ["Api", "a_b", "-a", "a.b", "\"\""] {
            let msg = invalid_msg(&format!("services:\n  {bad}: {{}}\n"));
            assert!(msg.contains("DNS label"), "{bad}: {msg}");
        }
        let msg = invalid_msg("services:\n  ? [a, b]\n  : {}\n");
        assert!(msg.contains("service name is a list"), "{msg}");
        let msg = invalid_msg("services:\n  1: {}\n  \"1\": {}\n");
        assert!(msg.contains("declared twice"), "{msg}");
    }

    #[test]
    fn structural_errors_are_clear() {
        let cases = [
            ("", "empty"),
            ("   \n\n", "empty"),
            ("# just a comment\n", "empty"),
            ("~\n", "empty"),
            (
                "- a\n- b\n",
                "must be a mapping with a `services:` key, but it is a list",
            ),
            ("hello\n", "but it is text"),
            ("name: x\n", "no `services:` key"),
            ("services:\n", "`services` is empty"),
            ("services: {}\n", "`services` is empty"),
            ("services: [a, b]\n", "`services` must be a mapping"),
            (
                "services:\n  api: 3\n",
                "service `api` must be a mapping of settings",
            ),
            (
                "services:\n  api: [x]\n",
                "service `api` must be a mapping of settings",
            ),
            (
                "services:\n  api: {}\n  api: {}\n",
                "the key `api` appears twice",
            ),
            (
                "services:\n  api: {}\n---\nservices: {}\n",
                "single YAML document",
            ),
            ("services:\n  api: {port: 1\n", "not valid YAML"),
            (
                "services:\n  api:\n    port: 1\n   env: {}\n",
                "not valid YAML",
            ),
            ("services:\n  api:\n    command: !Ref x\n", "not valid YAML"),
            (
                "services:\n  api:\n    ? {a: 1}\n    : x\n",
                "keys must be text",
            ),
        ];
        for (yaml, want) in cases {
            let msg = invalid_msg(yaml);
            assert!(msg.contains(want), "{yaml:?}: {msg}");
        }
    }

    #[test]
    fn at_most_32_services() {
        let mut yaml = String::from("services:\n");
        for i in 0..MAX_SERVICES {
            yaml.push_str(&format!("  s{i}: {{}}\n"));
        }
        assert_eq!(ok(&yaml).services.len(), MAX_SERVICES);
        yaml.push_str("  one-more: {}\n");
        assert!(invalid_msg(&yaml).contains("at most 32"));
    }

    #[test]
    fn merge_keys_and_anchors_work_for_shared_settings() {
        let m = ok(r#"
x-defaults: &defaults
  port: 3000
  env: {LOG: debug}
services:
  api:
    <<: *defaults
    expose: true
  web:
    <<: *defaults
    port: 4000
"#);
        assert_eq!(m.services[0].port, 3000);
        assert_eq!(m.services[0].env["LOG"], "debug");
        assert_eq!(m.services[1].port, 4000);
        assert_eq!(
            m.warnings,
            ["unknown top-level key `x-defaults` was ignored"]
        );
    }

    fn quick(yaml: &str) -> String {
        let t = Instant::now();
        let msg = invalid_msg(yaml);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "took {:?}",
            t.elapsed()
        );
        msg
    }

    #[test]
    fn oversized_text_is_rejected_before_parsing() {
        let yaml = format!(
            "services:\n  a: {{}}\n# {}\n",
            "x".repeat(MAX_MANIFEST_BYTES)
        );
        assert!(quick(&yaml).contains("KiB"));
    }

    #[test]
    fn deep_nesting_is_rejected_quickly() {
        let flow = format!("services: {}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(quick(&flow).contains("deeper than 32"), "{}", quick(&flow));
        let flow_maps = format!("services: {}{}", "{a: ".repeat(10_000), "}".repeat(10_000));
        quick(&flow_maps);
        let unclosed = "[".repeat(10_000);
        quick(&unclosed);
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&" ".repeat(i));
            block.push_str("a:\n");
        }
        assert!(quick(&block).contains("deeper than 32"));
        let mut seqs = String::new();
        for i in 0..200 {
            seqs.push_str(&" ".repeat(i * 2));
            seqs.push_str("-\n");
        }
        quick(&seqs);
        // Within the limit is fine, even inside an unknown key.
        let ok_depth = format!(
            "x: {}{}\nservices: {{a: {{}}}}\n",
            "[".repeat(30),
            "]".repeat(30)
        );
        assert_eq!(ok(&ok_depth).services.len(), 1);
    }

    #[test]
    fn alias_bombs_are_rejected_quickly() {
        let mut yaml = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..10 {
            let p = i - 1;
            yaml.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        yaml.push_str("services:\n  api:\n    env: {X: y}\n");
        let msg = quick(&yaml);
        assert!(msg.contains("alias"), "{msg}");

        // Many aliases of one big anchor.
        let mut wide = String::from("big: &big [");
        wide.push_str(&"x, ".repeat(5000));
        wide.push_str("x]\nservices:\n  api: {}\nrefs: [");
        wide.push_str(&"*big, ".repeat(2000));
        wide.push_str("*big]\n");
        quick(&wide);

        let unknown = "services:\n  api:\n    env: {X: *nope}\n";
        quick(unknown);

        // Aliases of one big scalar: each use is counted against the text budget.
        let big = "x".repeat(100 * 1024);
        let mut y = format!("a0: &a0 {big}\nb: [*a0, *a0, *a0, *a0, *a0, *a0]\n");
        y.push_str("services:\n  api: {}\n");
        assert!(quick(&y).contains("KiB of text"), "{}", quick(&y));
    }

    #[test]
    fn many_small_nodes_within_the_size_cap_are_rejected_or_parsed_quickly() {
        let yaml = format!(
            "services:\n  a: {{}}\nx: [{}0]\n",
            "0,".repeat(MAX_MANIFEST_BYTES / 2 - 40)
        );
        let t = Instant::now();
        let _ = Manifest::parse(&yaml);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }

    #[test]
    fn resolve_service_refs_replaces_exact_references_only() {
        let env: BTreeMap<String, String> = [
            ("A", "service://api"),
            ("B", "service://api/v1/graphql"),
            ("C", "http://service://api"),
            ("D", "service://ghost"),
            ("E", "plain"),
            ("F", "service://"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let out = resolve_service_refs(&env, |name| {
            (name == "api").then(|| "http://127.0.0.1:4000".to_owned())
        });
        assert_eq!(out["A"], "http://127.0.0.1:4000");
        assert_eq!(out["B"], "http://127.0.0.1:4000/v1/graphql");
        assert_eq!(out["C"], "http://service://api");
        assert_eq!(out["D"], "service://ghost");
        assert_eq!(out["E"], "plain");
        assert_eq!(out["F"], "service://");
        assert_eq!(out.len(), env.len());
    }

    #[test]
    fn parse_service_ref_splits_name_and_path() {
        assert_eq!(parse_service_ref("service://web"), Some(("web", "")));
        assert_eq!(
            parse_service_ref("service://web/a/b"),
            Some(("web", "/a/b"))
        );
        assert_eq!(parse_service_ref("service://"), Some(("", "")));
        assert_eq!(parse_service_ref("Service://web"), None);
        assert_eq!(parse_service_ref(" service://web"), None);
    }

    // ---- property tests ----

    /// A generated service, before rendering to YAML.
    #[derive(Debug, Clone)]
    struct Gen {
        name: String,
        build: Option<String>,
        port: Option<u16>,
        expose: Option<bool>,
        command: Option<String>,
        health: Option<String>,
        needs: Vec<String>,
        env: BTreeMap<String, String>,
        refs: Vec<(String, usize)>,
    }

    fn text() -> impl Strategy<Value = String> {
        "[ -~\t\néü漢字🎉]{0,24}"
    }

    fn gen_service() -> impl Strategy<Value = Gen> {
        (
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
            proptest::option::of(text()),
            proptest::option::of(1u16..=65535),
            proptest::option::of(any::<bool>()),
            proptest::option::of(text()),
            proptest::option::of("/[a-z0-9/_.-]{0,12}"),
            proptest::collection::vec(
                prop_oneof![
                    Just("postgres".to_owned()),
                    Just("redis".to_owned()),
                    "[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                ],
                0..3,
            ),
            proptest::collection::btree_map(
                "[A-Za-z_][A-Za-z0-9_]{0,12}",
                text().prop_filter("not a reference", |v| !v.starts_with(SERVICE_SCHEME)),
                0..5,
            ),
            proptest::collection::vec(("[A-Z][A-Z0-9_]{0,6}_URL", any::<usize>()), 0..3),
        )
            .prop_map(
                |(name, build, port, expose, command, health, needs, env, refs)| Gen {
                    name,
                    build,
                    port,
                    expose,
                    command,
                    health,
                    needs,
                    env,
                    refs,
                },
            )
    }

    fn gen_manifest() -> impl Strategy<Value = Vec<Gen>> {
        proptest::collection::vec(gen_service(), 1..6).prop_map(|mut services| {
            let mut seen = BTreeSet::new();
            services.retain(|s| seen.insert(s.name.clone()));
            let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
            for s in &mut services {
                for (key, target) in std::mem::take(&mut s.refs) {
                    let target = &names[target % names.len()];
                    s.env.insert(key, format!("service://{target}/p"));
                }
            }
            services
        })
    }

    /// JSON strings are valid YAML double-quoted scalars, with every escape YAML needs.
    fn q(s: &str) -> String {
        serde_json::to_string(s).unwrap()
    }

    fn render(services: &[Gen]) -> String {
        let mut y = String::from("services:\n");
        for s in services {
            y.push_str(&format!("  {}:\n", q(&s.name)));
            if let Some(b) = &s.build {
                y.push_str(&format!("    build: {}\n", q(b)));
            }
            if let Some(p) = s.port {
                y.push_str(&format!("    port: {p}\n"));
            }
            if let Some(e) = s.expose {
                y.push_str(&format!("    expose: {e}\n"));
            }
            if let Some(c) = &s.command {
                y.push_str(&format!("    command: {}\n", q(c)));
            }
            if let Some(h) = &s.health {
                y.push_str(&format!("    health: {h}\n"));
            }
            if !s.needs.is_empty() {
                y.push_str("    needs:\n");
                for n in &s.needs {
                    y.push_str(&format!("      - {n}\n"));
                }
            }
            y.push_str("    env:\n");
            for (k, v) in &s.env {
                y.push_str(&format!("      {k}: {}\n", q(v)));
            }
        }
        y
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(s in any::<String>()) {
            let _ = Manifest::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_yamlish_text(s in "[a-z:{}\\[\\],&*!|>#'\"\\- \n\t0-9.~%@`]{0,300}") {
            let _ = Manifest::parse(&s);
            let _ = Manifest::parse(&format!("services:\n  api:\n    env:\n      {s}"));
        }

        #[test]
        fn parse_never_panics_on_arbitrary_nesting(
            opens in proptest::collection::vec(prop_oneof![Just("["), Just("{a: "), Just("- "), Just("\n  "), Just("&x "), Just("*x "), Just("k: ")], 0..400),
            close in any::<bool>(),
        ) {
            let mut s = String::from("services:\n  api:\n    env: ");
            for o in &opens {
                s.push_str(o);
            }
            if close {
                for o in opens.iter().rev() {
                    match *o {
                        "[" => s.push(']'),
                        "{a: " => s.push('}'),
                        _ => {}
                    }
                }
            }
            let t = Instant::now();
            let _ = Manifest::parse(&s);
            prop_assert!(t.elapsed() < Duration::from_secs(2));
        }

        #[test]
        fn generated_manifests_parse_back_to_the_same_services(generated in gen_manifest()) {
            let yaml = render(&generated);
            let m = Manifest::parse(&yaml).map_err(|e| TestCaseError::fail(format!("{e}\n{yaml}")))?;
            prop_assert_eq!(m.services.len(), generated.len());
            for (got, want) in m.services.iter().zip(&generated) {
                prop_assert_eq!(got.name.as_str(), want.name.as_str());
                prop_assert_eq!(&got.build, &want.build);
                prop_assert_eq!(got.port, want.port.unwrap_or(DEFAULT_PORT));
                prop_assert_eq!(got.expose, want.expose.unwrap_or(false));
                prop_assert_eq!(&got.command, &want.command);
                prop_assert_eq!(&got.health, &want.health);
                let want_needs: Vec<Need> = want.needs.iter().filter_map(|n| Need::parse_text(n)).collect();
                prop_assert_eq!(&got.needs, &want_needs);
                prop_assert_eq!(&got.env, &want.env);
            }
            prop_assert!(m.warnings.iter().all(|w| w.contains("cycle")), "{:?}", m.warnings);
        }
    }
}
