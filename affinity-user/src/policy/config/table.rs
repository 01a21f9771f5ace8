//! A rules-file table read key by key, so every wrong key or value in a
//! file is reported at its own line:column. serde's derived structs stop
//! at the first one (`deny_unknown_fields`, a type mismatch), which made
//! `check` list one schema error per run.

use std::{collections::BTreeMap, ops::Range};

use toml::{Spanned, Value};

use super::did_you_mean;

/// A table as written: every key and value with its span.
pub(crate) type RawTable = BTreeMap<Spanned<String>, Spanned<Value>>;

/// "an integer", "a string": a TOML type with its article.
pub(crate) fn a(value: &Value) -> String {
    let kind = value.type_str();
    let article = if kind.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {kind}")
}

/// The keys of one table that its kind allows, each with its value's span.
pub(crate) struct Fields {
    found: Vec<(&'static str, Range<usize>, Value)>,
}

impl Fields {
    /// Takes the `allowed` keys of `table`; any other key is an error at
    /// its own position, with a suggestion when it is a close misspelling.
    pub(crate) fn of(
        table: RawTable,
        allowed: &[&'static str],
        error: &mut impl FnMut(Range<usize>, String),
    ) -> Fields {
        let mut found = Vec::new();
        for (key, value) in table {
            let span = value.span();
            match allowed.iter().find(|a| **a == key.get_ref().as_str()) {
                Some(name) => found.push((*name, span, value.into_inner())),
                None => {
                    let expected: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
                    let hint = did_you_mean(key.get_ref(), allowed);
                    error(
                        key.span(),
                        format!(
                            "unknown field `{}`, expected one of {}{hint}",
                            key.get_ref(),
                            expected.join(", ")
                        ),
                    );
                }
            }
        }
        Fields { found }
    }

    /// The value of `key`, if the table has it.
    pub(crate) fn value(&self, key: &str) -> Option<(Range<usize>, &Value)> {
        self.found
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, span, v)| (span.clone(), v))
    }

    /// The string value of `key`: None when absent, Err (reported) when it
    /// is not a string.
    pub(crate) fn string(
        &self,
        key: &str,
        example: &str,
        error: &mut impl FnMut(Range<usize>, String),
    ) -> Result<Option<(Range<usize>, String)>, ()> {
        match self.value(key) {
            None => Ok(None),
            Some((span, Value::String(s))) => Ok(Some((span, s.clone()))),
            Some((span, other)) => {
                error(
                    span,
                    format!("{key} must be a string such as {example}, not {}", a(other)),
                );
                Err(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        t: RawTable,
    }

    #[test]
    fn every_unknown_key_and_wrong_type_is_an_error_of_its_own() {
        let text = "[t]\nprefer = 3\ncolour = 1\nmatc = \"x\"\n";
        let doc: Doc = toml::from_str(text).unwrap();
        let mut errors = Vec::new();
        let fields = Fields::of(doc.t, &["match", "prefer"], &mut |span, m| {
            errors.push((span.start, m));
        });
        let prefer = fields.string("prefer", "\"0-3\"", &mut |span, m| {
            errors.push((span.start, m));
        });
        assert!(prefer.is_err());
        errors.sort();
        assert_eq!(
            errors,
            [
                (13, "prefer must be a string such as \"0-3\", not an integer".to_string()),
                (
                    15,
                    "unknown field `colour`, expected one of `match`, `prefer`".to_string()
                ),
                (
                    26,
                    "unknown field `matc`, expected one of `match`, `prefer`; did you mean \"match\"?"
                        .to_string()
                ),
            ]
        );
    }
}
