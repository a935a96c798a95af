//! The build phase of a Dockerfile as the local runtime runs it (`spec/isolation.md`, Builds):
//! the final stage's `WORKDIR`, `ENV`, `ARG`, `COPY`/`ADD` and `RUN`, resolved against build
//! args into the steps to run, the image's `ENV` and its working directory. The upload checks a
//! Dockerfile with the same function, so a file the runtime cannot build is refused before any
//! row is written. `CMD`/`ENTRYPOINT` stay `tarball::dockerfile_command`'s.
//!
//! The image starts as the build context (there is no base image to start from), so a
//! Dockerfile without `COPY` runs its code where it lies, as before builds existed.

use crate::ids::sha256_hex;
use crate::tarball::{
    Form, escape_directive, heredoc_terminators, next_instruction, parse_form, shell_join,
};
use std::collections::BTreeMap;

/// Instructions that describe a container the local runtime does not make: accepted, ignored.
const IGNORED: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "USER",
    "EXPOSE",
    "LABEL",
    "MAINTAINER",
    "HEALTHCHECK",
    "STOPSIGNAL",
    "SHELL",
    "VOLUME",
    "ONBUILD",
];
/// `COPY`/`ADD` flags with no meaning here (ownership is the stack user's anyway).
const IGNORED_COPY_FLAGS: &[&str] = &["--chown", "--chmod", "--link"];
/// `RUN` flags with no meaning here (no cache mounts; the sandbox decides the network).
const IGNORED_RUN_FLAGS: &[&str] = &["--mount", "--network", "--security"];
/// How much of an instruction logs, events and errors show.
const SHOWN_CHARS: usize = 200;

/// Why a Dockerfile cannot be built by the local runtime. Safe to show the stack owner: it
/// quotes the instruction as written, never a build arg's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Dockerfile `{instruction}`: {reason}")]
pub struct DockerfileError {
    pub instruction: String,
    pub reason: String,
}

/// What the local runtime builds from a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPlan {
    /// The images `FROM` names along the built chain of stages: recorded, not fetched.
    pub from: Vec<String>,
    /// The steps that change files, in order. Empty: nothing to build.
    pub steps: Vec<BuildStep>,
    /// The image's `ENV` at the end, which the service's environment starts from.
    pub env: BTreeMap<String, String>,
    /// The final `WORKDIR`, relative to the image root (`""` for the root).
    pub workdir: String,
}

/// One step of a build.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BuildStep {
    /// The instruction as written (shortened): shown in logs and events. Never substituted,
    /// so it holds no build arg value.
    pub text: String,
    /// The working directory, relative to the image root (`""` for the root).
    pub workdir: String,
    pub action: BuildAction,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum BuildAction {
    /// Copy `sources` (relative to the context root, `""` for all of it; `*`, `?` and `[...]`
    /// wildcards as the shell has them) to `dest` (relative to the image root, `""` for the
    /// root). `into_dir`: `dest` is a directory the sources go into (a trailing `/`, several
    /// sources, or a wildcard), else it names the copy itself.
    Copy {
        sources: Vec<String>,
        dest: String,
        into_dir: bool,
    },
    /// `sh -c command` with the `ARG` and `ENV` values in scope added to its environment.
    Run {
        command: String,
        env: BTreeMap<String, String>,
    },
}

impl BuildPlan {
    /// The build cache key: the same artifact built by the same resolved steps (build arg
    /// values included, through the steps' environments) gives the same files.
    pub fn cache_key(&self, artifact: &str) -> String {
        let steps = serde_json::to_string(&self.steps).unwrap_or_default();
        sha256_hex(format!("stackyard-build-1\n{artifact}\n{steps}").as_bytes())
    }
}

/// Whether a service is built from its root Dockerfile: when it has one and no root `Procfile`
/// (a Procfile app keeps a Dockerfile meant for other platforms out of its way).
pub fn is_built(has_procfile: bool, has_dockerfile: bool) -> bool {
    has_dockerfile && !has_procfile
}

/// One instruction of a stage, kept raw until the stage is known to be built.
struct Raw {
    word: String,
    args: String,
    text: String,
}

struct Stage {
    alias: Option<String>,
    /// The earlier stage this one is built `FROM`, if any.
    base: Option<usize>,
    image: String,
    instructions: Vec<Raw>,
}

/// Resolves a Dockerfile's final stage (and the stages it is built `FROM`) against `args`: an
/// `ARG` takes its value from `args` when it has the name, else its default, else the default
/// of the same `ARG` before the first `FROM`. `$NAME`, `${NAME}`, `${NAME:-word}` and
/// `${NAME:+word}` are substituted in `WORKDIR`, `ENV`, `ARG`, `COPY` and `ADD` (not in `RUN`:
/// its shell does that with the same values in its environment).
pub fn build_plan(
    text: &str,
    args: &BTreeMap<String, String>,
) -> Result<BuildPlan, DockerfileError> {
    let escape = escape_directive(text);
    let mut lines = text.lines();
    let mut heredocs = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut global: BTreeMap<String, String> = BTreeMap::new();
    while let Some(instruction) = next_instruction(&mut lines, escape, &mut heredocs) {
        let (word, rest) = match instruction.split_once(char::is_whitespace) {
            Some((w, a)) => (w.to_ascii_uppercase(), a.trim().to_owned()),
            None => (instruction.to_ascii_uppercase(), String::new()),
        };
        let raw = Raw {
            word,
            args: rest,
            text: shorten(&instruction),
        };
        if raw.word == "FROM" {
            let mut words = raw.args.split_whitespace().filter(|w| !w.starts_with("--"));
            let image = words.next().unwrap_or_default().to_owned();
            let alias = match (words.next(), words.next()) {
                (Some(kw), Some(name)) if kw.eq_ignore_ascii_case("as") => {
                    Some(name.to_ascii_lowercase())
                }
                _ => None,
            };
            let base = stages
                .iter()
                .rposition(|s| s.alias.as_deref() == Some(image.to_ascii_lowercase().as_str()));
            stages.push(Stage {
                alias,
                base,
                image,
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(raw),
            // Before the first `FROM` only `ARG` means something (defaults for the stages).
            None if raw.word == "ARG" => {
                for (name, default) in arg_words(&substitute(&raw.args, &global)) {
                    let value = args.get(&name).cloned().or(default);
                    if let Some(v) = value {
                        global.insert(name, v);
                    }
                }
            }
            // Tolerated as before builds existed: a file without `FROM` is one stage.
            None => stages.push(Stage {
                alias: None,
                base: None,
                image: String::new(),
                instructions: vec![raw],
            }),
        }
    }

    let mut chain = Vec::new();
    let mut next = stages.len().checked_sub(1);
    while let Some(i) = next {
        chain.push(i);
        next = stages[i].base;
    }
    chain.reverse();

    let mut b = Builder {
        args,
        global: &global,
        declared: BTreeMap::new(),
        env: BTreeMap::new(),
        workdir: Vec::new(),
        steps: Vec::new(),
    };
    for &i in &chain {
        for raw in &stages[i].instructions {
            b.apply(raw)?;
        }
    }
    Ok(BuildPlan {
        from: chain
            .iter()
            .map(|&i| stages[i].image.clone())
            .filter(|s| !s.is_empty())
            .collect(),
        steps: b.steps,
        env: b.env,
        workdir: b.workdir.join("/"),
    })
}

/// The state of a build as its instructions are read in order.
struct Builder<'a> {
    args: &'a BTreeMap<String, String>,
    global: &'a BTreeMap<String, String>,
    /// `ARG`s declared so far with a value.
    declared: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    workdir: Vec<String>,
    steps: Vec<BuildStep>,
}

impl Builder<'_> {
    /// What `$NAME` means at this point: `ARG` values, overridden by `ENV` ones.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.declared.clone();
        vars.extend(self.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars
    }

    fn apply(&mut self, raw: &Raw) -> Result<(), DockerfileError> {
        let fail = |reason: &str| DockerfileError {
            instruction: raw.text.clone(),
            reason: reason.to_owned(),
        };
        let heredoc = !heredoc_terminators(&raw.args).is_empty();
        match raw.word.as_str() {
            "WORKDIR" => {
                let dir = words(&substitute(&raw.args, &self.vars())).join(" ");
                if dir.is_empty() {
                    return Err(fail("names no directory"));
                }
                if dir.starts_with('/') {
                    self.workdir.clear();
                }
                push_path(&mut self.workdir, &dir);
            }
            "ENV" => {
                let pairs = env_pairs(&substitute(&raw.args, &self.vars()))
                    .ok_or_else(|| fail("is not `ENV KEY=value ...` or `ENV KEY value`"))?;
                self.env.extend(pairs);
            }
            "ARG" => {
                let declared = arg_words(&substitute(&raw.args, &self.vars()));
                if declared.is_empty() {
                    return Err(fail("names no argument"));
                }
                for (name, default) in declared {
                    let value = self
                        .args
                        .get(&name)
                        .cloned()
                        .or(default)
                        .or_else(|| self.global.get(&name).cloned());
                    if let Some(v) = value {
                        self.declared.insert(name, v);
                    }
                }
            }
            "COPY" | "ADD" => {
                if heredoc {
                    return Err(fail(
                        "heredocs are not supported by the local runtime; put the file in the build context",
                    ));
                }
                let action = self.copy(&raw.word, &raw.args).map_err(|r| fail(&r))?;
                self.push(raw, action);
            }
            "RUN" => {
                if heredoc {
                    return Err(fail(
                        "heredocs are not supported by the local runtime; put the script in a file in the build context",
                    ));
                }
                let mut rest = raw.args.as_str();
                while let Some(flag) = rest.strip_prefix("--") {
                    let (word, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
                    let name = format!("--{}", word.split('=').next().unwrap_or_default());
                    if !IGNORED_RUN_FLAGS.contains(&name.as_str()) {
                        return Err(fail(&format!(
                            "`{name}` is not supported by the local runtime"
                        )));
                    }
                    rest = after.trim_start();
                }
                let command = match parse_form(rest) {
                    Some(Form::Exec(argv)) if !argv.is_empty() => shell_join(&argv),
                    Some(Form::Shell(s)) => s,
                    _ => return Err(fail("has no command")),
                };
                let env = self.vars();
                self.push(raw, BuildAction::Run { command, env });
            }
            w if IGNORED.contains(&w) => {}
            _ => return Err(fail("is not an instruction the local runtime knows")),
        }
        Ok(())
    }

    fn push(&mut self, raw: &Raw, action: BuildAction) {
        self.steps.push(BuildStep {
            text: raw.text.clone(),
            workdir: self.workdir.join("/"),
            action,
        });
    }

    fn copy(&self, word: &str, args: &str) -> Result<BuildAction, String> {
        let mut rest = args.trim();
        while let Some(flag) = rest.strip_prefix("--") {
            let (w, after) = flag.split_once(char::is_whitespace).unwrap_or((flag, ""));
            let name = format!("--{}", w.split('=').next().unwrap_or_default());
            if name == "--from" {
                return Err("copies from another stage or image: only the last stage of a multi-stage Dockerfile is built by the local runtime, so it cannot copy from an earlier one".into());
            }
            if !IGNORED_COPY_FLAGS.contains(&name.as_str()) {
                return Err(format!("`{name}` is not supported by the local runtime"));
            }
            rest = after.trim_start();
        }
        let mut parts = match parse_form(rest) {
            Some(Form::Exec(argv)) => argv.iter().map(|a| substitute(a, &self.vars())).collect(),
            _ => words(&substitute(rest, &self.vars())),
        };
        if parts.len() < 2 {
            return Err("needs a source and a destination".into());
        }
        let dest = parts.pop().unwrap_or_default();
        let mut sources = Vec::new();
        for s in &parts {
            if s.contains("://") || s.starts_with("git@") {
                return Err(format!(
                    "{word} of a URL is not supported: the local runtime builds from the context only (download it in a RUN step)"
                ));
            }
            let mut path = Vec::new();
            for part in s.split('/') {
                match part {
                    "" | "." => {}
                    ".." => {
                        if path.pop().is_none() {
                            return Err(format!("`{s}` is outside the build context"));
                        }
                    }
                    p => path.push(p.to_owned()),
                }
            }
            sources.push(path.join("/"));
        }
        let wildcard = sources.iter().any(|s| s.contains(['*', '?', '[']));
        let into_dir = dest.ends_with('/')
            || dest == "."
            || dest.ends_with("/.")
            || sources.len() > 1
            || wildcard;
        let mut target = if dest.starts_with('/') {
            Vec::new()
        } else {
            self.workdir.clone()
        };
        push_path(&mut target, &dest);
        Ok(BuildAction::Copy {
            sources,
            dest: target.join("/"),
            into_dir,
        })
    }
}

/// Applies a `/`-separated path to `base`: `.` and empty parts are skipped, `..` goes up (never
/// above the root, as in an image).
fn push_path(base: &mut Vec<String>, path: &str) {
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                base.pop();
            }
            p => base.push(p.to_owned()),
        }
    }
}

fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(SHOWN_CHARS).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// `ENV KEY=value KEY2="two words"`, or the legacy `ENV KEY the rest`.
fn env_pairs(args: &str) -> Option<Vec<(String, String)>> {
    let first = args.split_whitespace().next()?;
    if !first.contains('=') {
        let (key, value) = args.split_once(char::is_whitespace)?;
        return Some(vec![(key.to_owned(), words(value).join(" "))]);
    }
    words(args)
        .into_iter()
        .map(|w| {
            let (k, v) = w.split_once('=')?;
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// `ARG NAME` and `ARG NAME=default` words.
fn arg_words(args: &str) -> Vec<(String, Option<String>)> {
    words(args)
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (w, None),
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Splits on whitespace, honouring double and single quotes and backslash escapes (removed).
fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' => {
                started = true;
                while let Some(q) = chars.next() {
                    if q == c {
                        break;
                    }
                    if q == '\\'
                        && c == '"'
                        && let Some(n) = chars.next()
                    {
                        word.push(n);
                        continue;
                    }
                    word.push(q);
                }
            }
            '\\' => {
                started = true;
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            c if c.is_whitespace() => {
                if started {
                    out.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    if started {
        out.push(word);
    }
    out
}

/// Docker's variable substitution: `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}`; an
/// unset name is empty; nothing inside single quotes; `\$` is kept for [`words`] to unescape.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut single = false;
    let mut i = 0;
    let name_char = |c: char| c.is_ascii_alphanumeric() || c == '_';
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            single = !single;
        }
        if single || c != '$' {
            if c == '\\' && !single && chars.get(i + 1) == Some(&'$') {
                out.push_str("\\$");
                i += 2;
                continue;
            }
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{')
            && let Some(len) = chars[i + 2..].iter().position(|&c| c == '}')
        {
            let inner: String = chars[i + 2..i + 2 + len].iter().collect();
            let value = |name: &str| vars.get(name).cloned().unwrap_or_default();
            let replaced = if let Some((name, word)) = inner.split_once(":-") {
                let v = value(name);
                if v.is_empty() { word.to_owned() } else { v }
            } else if let Some((name, word)) = inner.split_once(":+") {
                if value(name).is_empty() {
                    String::new()
                } else {
                    word.to_owned()
                }
            } else {
                value(&inner)
            };
            out.push_str(&replaced);
            i += len + 3;
            continue;
        }
        let len = chars[i + 1..].iter().take_while(|&&c| name_char(c)).count();
        if len == 0 || chars[i + 1].is_ascii_digit() {
            out.push(c);
            i += 1;
            continue;
        }
        let name: String = chars[i + 1..i + 1 + len].iter().collect();
        out.push_str(vars.get(&name).map(String::as_str).unwrap_or_default());
        i += len + 1;
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn plan(text: &str) -> BuildPlan {
        build_plan(text, &BTreeMap::new()).unwrap()
    }

    fn err(text: &str) -> String {
        build_plan(text, &BTreeMap::new()).unwrap_err().to_string()
    }

    fn run(step: &BuildStep) -> (&str, &BTreeMap<String, String>) {
        match &step.action {
            BuildAction::Run { command, env } => (command, env),
            other => panic!("not a RUN: {other:?}"),
        }
    }

    fn copy(step: &BuildStep) -> (Vec<&str>, &str, bool) {
        match &step.action {
            BuildAction::Copy {
                sources,
                dest,
                into_dir,
            } => (
                sources.iter().map(String::as_str).collect(),
                dest,
                *into_dir,
            ),
            other => panic!("not a COPY: {other:?}"),
        }
    }

    #[test]
    fn a_typical_node_dockerfile_becomes_copy_run_copy() {
        let p = plan(
            "FROM node:20-slim\nWORKDIR /app\nCOPY package*.json ./\nRUN npm install\nCOPY . .\nEXPOSE 3000\nCMD [\"node\",\"server.js\"]\n",
        );
        assert_eq!(p.from, vec!["node:20-slim"]);
        assert_eq!(p.workdir, "app");
        assert_eq!(p.steps.len(), 3);
        assert_eq!(copy(&p.steps[0]), (vec!["package*.json"], "app", true));
        assert_eq!(run(&p.steps[1]).0, "npm install");
        assert_eq!(p.steps[1].workdir, "app");
        assert_eq!(copy(&p.steps[2]), (vec![""], "app", true));
        assert_eq!(p.steps[1].text, "RUN npm install");
    }

    #[test]
    fn env_and_arg_values_reach_later_steps_and_the_image() {
        let mut args = BTreeMap::new();
        args.insert("MODE".to_owned(), "prod".to_owned());
        args.insert("UNDECLARED".to_owned(), "x".to_owned());
        let p = build_plan(
            "ARG BASE=3.11\nFROM python:${BASE}\nARG BASE\nARG MODE=dev GREETING=\"hello there\"\nENV APP_HOME=/srv/app LEVEL=${MODE:-none}\nENV LEGACY some words\nWORKDIR $APP_HOME\nRUN echo $GREETING\n",
            &args,
        )
        .unwrap();
        assert_eq!(p.workdir, "srv/app");
        let (command, env) = run(&p.steps[0]);
        assert_eq!(command, "echo $GREETING");
        assert_eq!(env["BASE"], "3.11");
        assert_eq!(env["MODE"], "prod");
        assert_eq!(env["GREETING"], "hello there");
        assert_eq!(env["LEVEL"], "prod");
        assert!(!env.contains_key("UNDECLARED"));
        assert_eq!(
            p.env.len(),
            3,
            "ARG values are not the image's env: {:?}",
            p.env
        );
        assert_eq!(p.env["LEGACY"], "some words");
        assert_eq!(p.env["APP_HOME"], "/srv/app");
    }

    #[test]
    fn copy_forms_and_destinations() {
        let p = plan(
            "FROM x\nWORKDIR /w\nCOPY a.txt b.txt dir/\nCOPY [\"src dir\", \"/opt/dst\"]\nADD --chown=1:1 ./sub/../file .\nCOPY conf /etc/app/conf.d/\nCOPY one two\n",
        );
        assert_eq!(copy(&p.steps[0]), (vec!["a.txt", "b.txt"], "w/dir", true));
        assert_eq!(copy(&p.steps[1]), (vec!["src dir"], "opt/dst", false));
        assert_eq!(copy(&p.steps[2]), (vec!["file"], "w", true));
        assert_eq!(copy(&p.steps[3]), (vec!["conf"], "etc/app/conf.d", true));
        assert_eq!(copy(&p.steps[4]), (vec!["one"], "w/two", false));
    }

    #[test]
    fn only_the_built_chain_of_stages_counts() {
        let p = plan(
            "FROM node AS deps\nRUN npm ci\nFROM golang AS unused\nRUN go build\nFROM deps AS final\nRUN npm test\n",
        );
        assert_eq!(p.from, vec!["node", "deps"]);
        let commands: Vec<&str> = p.steps.iter().map(|s| run(s).0).collect();
        assert_eq!(commands, vec!["npm ci", "npm test"]);
        // An unbuilt stage may use what the local runtime cannot do.
        plan("FROM node AS web\nCOPY --from=other /x /y\nFROM python\nRUN true\n");
    }

    #[test]
    fn exec_form_run_is_quoted_and_flags_are_dropped() {
        let p = plan(
            "FROM x\nRUN [\"echo\", \"a b\"]\nRUN --mount=type=cache,target=/root/.npm npm ci\n",
        );
        assert_eq!(run(&p.steps[0]).0, "echo 'a b'");
        assert_eq!(run(&p.steps[1]).0, "npm ci");
    }

    #[test]
    fn what_cannot_be_built_is_refused_with_the_instruction() {
        let e = err(
            "FROM node AS b\nRUN make\nFROM nginx\nCOPY --from=b /app/dist /usr/share/nginx/html\n",
        );
        assert!(
            e.contains("COPY --from=b") && e.contains("only the last stage"),
            "{e}"
        );
        assert!(err("FROM x\nADD https://example.com/a.tgz /a\n").contains("URL"));
        assert!(err("FROM x\nCOPY ../secret /s\n").contains("outside the build context"));
        assert!(err("FROM x\nCOPY onlyone\n").contains("source and a destination"));
        assert!(err("FROM x\nRUN <<EOF\necho hi\nEOF\n").contains("heredocs"));
        assert!(err("FROM x\nFROBNICATE\n").contains("FROBNICATE"));
        assert!(err("FROM x\nRUN --privileged true\n").contains("--privileged"));
    }

    #[test]
    fn a_file_without_build_steps_builds_nothing() {
        let p = plan("FROM python:3.12\nWORKDIR /app\nEXPOSE 80\nCMD python app.py\n");
        assert!(p.steps.is_empty());
        assert_eq!(p.workdir, "app");
    }

    #[test]
    fn the_cache_key_follows_artifact_steps_and_arg_values_only() {
        let text = "FROM x\nARG V=1\nRUN echo $V\n";
        let key = |artifact: &str, v: Option<&str>| {
            let mut args = BTreeMap::new();
            if let Some(v) = v {
                args.insert("V".to_owned(), v.to_owned());
            }
            args.insert("OTHER".to_owned(), "changes".to_owned());
            build_plan(text, &args).unwrap().cache_key(artifact)
        };
        assert_eq!(key("a", None), key("a", Some("1")));
        assert_ne!(key("a", None), key("b", None));
        assert_ne!(key("a", None), key("a", Some("2")));
        let other = build_plan("FROM x\nARG V=1\nRUN echo $V; true\n", &BTreeMap::new()).unwrap();
        assert_ne!(other.cache_key("a"), key("a", None));
    }

    #[test]
    fn substitution_rules() {
        let mut vars = BTreeMap::new();
        vars.insert("A".to_owned(), "1".to_owned());
        vars.insert("E".to_owned(), String::new());
        assert_eq!(
            substitute("$A-${A}-${B:-d}-${A:+set}-${E:-empty}-$9", &vars),
            "1-1-d-set-empty-$9"
        );
        assert_eq!(substitute("'$A' \\$A", &vars), "'$A' \\$A");
        assert_eq!(
            words("a \"b c\" 'd e' f\\ g"),
            vec!["a", "b c", "d e", "f g"]
        );
    }
}
