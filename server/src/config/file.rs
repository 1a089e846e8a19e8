//! `quipd --config FILE`: the same settings as the flags, in TOML.
//!
//! One key per flag, named like the flag with `_` for `-` (`max_body` for
//! `--max-body`). The file is not a second schema to keep in step with the
//! flags: its keys are the flags' ids, and each value goes through its
//! flag's own parser (ranges, enums, addresses), so a setting means the
//! same wherever it comes from and a new flag is a new key at once.
//!
//! Precedence: flags > environment > file > defaults. The command line is
//! parsed first; [`ArgMatches::value_source`] says which settings came from
//! the command line or the environment, and the file's values for the
//! others are added as flags for a second parse, which checks them with the
//! flags' parsers. An unknown key, a value of the wrong TOML type, or one
//! its flag refuses, is an error naming the file, the line and the key
//! ([`Applied::explain`] maps clap's error back to the file).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::ArgMatches;
use clap::parser::ValueSource;
use toml::Spanned;

/// Flags that are not settings: never read from the file.
const NOT_SETTINGS: &[&str] = &["config", "help", "version"];

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not a table of plain values.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: String,
        /// The TOML parser's message (it names the line).
        message: String,
    },
    /// A key no flag has.
    #[error("{path}:{line}: unknown key `{key}` (`quipd config default` lists them all)")]
    UnknownKey {
        /// The file.
        path: String,
        /// 1-based.
        line: usize,
        /// The key.
        key: String,
    },
    /// A value its flag refuses, or of the wrong TOML type.
    #[error("{path}:{line}: bad value for `{key}`: {message}")]
    BadValue {
        /// The file.
        path: String,
        /// 1-based.
        line: usize,
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
}

/// A file's settings as command-line arguments, and where each came from.
#[derive(Debug, Default)]
pub struct Applied {
    /// `--flag value` (or `--switch`) per key the command line and the
    /// environment left unset.
    pub args: Vec<OsString>,
    /// The file, for errors.
    path: String,
    /// Flag (`--max-body`) → its key and line in the file.
    origins: Vec<(String, String, usize)>,
}

impl Applied {
    /// `e`, an error from parsing with [`Applied::args`], as an error about
    /// the file's key and line when the argument it names came from the
    /// file; else `e` itself (it is about the command line).
    pub fn explain(&self, e: clap::Error) -> Result<clap::Error, FileError> {
        use clap::error::{ContextKind, ContextValue};
        let Some(ContextValue::String(arg)) = e.get(ContextKind::InvalidArg) else {
            return Ok(e);
        };
        let flag = arg.split([' ', '=']).next().unwrap_or(arg);
        match self.origins.iter().find(|(f, _, _)| f == flag) {
            Some((_, key, line)) => Err(FileError::BadValue {
                path: self.path.clone(),
                line: *line,
                key: key.clone(),
                message: first_line(&e.to_string()),
            }),
            None => Ok(e),
        }
    }
}

/// The settings in `path` that apply: those not already set on the command
/// line or by the environment in `matches`. Every key is checked, and
/// every value's TOML type; the values that apply are checked by the
/// flags' parsers when parsed.
pub fn args_from_file(cmd: &clap::Command, matches: &ArgMatches, path: &Path) -> Result<Applied, FileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: shown.clone(),
        source,
    })?;
    args_from_str(cmd, matches, &text, &shown)
}

/// [`args_from_file`] on the file's text (`path` only names it in errors).
pub fn args_from_str(cmd: &clap::Command, matches: &ArgMatches, text: &str, path: &str) -> Result<Applied, FileError> {
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| FileError::Syntax {
            path: path.to_string(),
            message: e.to_string(),
        })?;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let mut applied = Applied {
        path: path.to_string(),
        ..Applied::default()
    };
    for (key, value) in &table {
        let line = line_of(key.span().start);
        let name = key.get_ref().as_str();
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == name && !NOT_SETTINGS.contains(&name))
            .ok_or_else(|| FileError::UnknownKey {
                path: path.to_string(),
                line,
                key: name.to_string(),
            })?;
        let bad = |message: String| FileError::BadValue {
            path: path.to_string(),
            line: line_of(value.span().start),
            key: name.to_string(),
            message,
        };
        let flag = format!("--{}", arg.get_long().expect("every setting has a long flag"));
        let from_user = matches!(
            matches.value_source(name),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !arg.get_action().takes_values() {
            // A switch (`no_https = true`).
            let on = value
                .get_ref()
                .as_bool()
                .ok_or_else(|| bad("expected true or false".into()))?;
            if on && !from_user {
                applied.args.push(flag.clone().into());
                applied.origins.push((flag, name.to_string(), line));
            }
            continue;
        }
        let text = match value.get_ref() {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => return Err(bad(format!("expected a string or a number, got {}", other.type_str()))),
        };
        if !from_user {
            applied.args.push(flag.clone().into());
            applied.args.push(text.into());
            applied
                .origins
                .push((flag, name.to_string(), line_of(value.span().start)));
        }
    }
    Ok(applied)
}

/// clap's message without its "error:" prefix and usage lines.
fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    line.strip_prefix("error: ").unwrap_or(line).to_string()
}

/// A commented example file: every setting with its help text and its
/// default, commented out (`quipd config default`).
pub fn example(cmd: &clap::Command) -> String {
    let mut out = String::from(
        "# quipd configuration (quipd --config FILE). Every key is a flag of\n\
         # `quipd --help`, with `_` for `-`; a flag or its QUIP_* environment\n\
         # variable overrides the file. Uncomment what you change.\n",
    );
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if NOT_SETTINGS.contains(&id) || arg.is_hide_set() {
            continue;
        }
        out.push('\n');
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let help = if help.ends_with('.') { help } else { format!("{help}.") };
        for line in wrap(&help, 76) {
            let _ = writeln!(out, "# {line}");
        }
        let values: Vec<String> = arg
            .get_possible_values()
            .iter()
            .map(|v| v.get_name().to_string())
            .collect();
        if !values.is_empty() && arg.get_action().takes_values() {
            let _ = writeln!(out, "# One of: {}.", values.join(", "));
        }
        let default = arg
            .get_default_values()
            .first()
            .map(|d| d.to_string_lossy().into_owned());
        let value = if !arg.get_action().takes_values() {
            "false".to_string()
        } else {
            match default {
                Some(d) if d.parse::<f64>().is_ok() => d,
                Some(d) => format!("{d:?}"),
                None => {
                    out.push_str("# Unset by default.\n");
                    "\"\"".to_string()
                }
            }
        };
        let _ = writeln!(out, "#{id} = {value}");
    }
    out
}

/// `text` in lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split("\n\n") {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > width {
                lines.push(std::mem::take(&mut line));
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}
