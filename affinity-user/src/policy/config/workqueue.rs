//! `[[workqueue]]` rules: which CPUs a `WQ_SYSFS` workqueue's workers use.
//!
//! ```toml
//! [[workqueue]]
//! match = "writeback"    # a glob on the name under /sys/devices/virtual/workqueue/
//! prefer = "0"           # "housekeeping", "node:N" or a cpulist
//! ```
//!
//! The same values as `[[rule]]` and `[[irq]]`, except `"node"`: a
//! workqueue has no device, so no node of its own to mean.

use std::{collections::HashMap, ops::Range};

use toml::Spanned;

use super::{
    CommGlob, Preference, did_you_mean,
    table::{Fields, RawTable},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkqueueRule {
    /// A glob on the workqueue's name (`writeback`, `blkcg_punt_bio`).
    pub target: CommGlob,
    pub prefer: Preference,
    /// Where the rule's `match` is, for the warning about a rule that names
    /// no workqueue on the machine.
    pub line: usize,
}

/// Turns the raw `[[workqueue]]` tables into rules; every problem goes to
/// `error` with its span, and the rule is left out.
pub(super) fn workqueue_rules(
    raw: Vec<Spanned<RawTable>>,
    text: &str,
    width: u32,
    error: &mut impl FnMut(Range<usize>, String),
) -> Vec<WorkqueueRule> {
    let mut rules = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for spanned in raw {
        let span = spanned.span();
        let fields = Fields::of(spanned.into_inner(), &["match", "prefer"], error);
        let prefer = match fields.string("prefer", "\"housekeeping\" or \"0-3\"", error) {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                error(span.clone(), "missing field `prefer`".into());
                None
            }
            Err(()) => None,
        };
        let target = match fields.string("match", "\"writeback\"", error) {
            Ok(Some((m_span, m))) => Some((m_span, m)),
            Ok(None) => {
                error(
                    span,
                    "a [[workqueue]] rule needs `match = \"workqueue name glob\"`".into(),
                );
                continue;
            }
            Err(()) => None,
        };
        let (Some((m_span, m)), Some((prefer_span, prefer))) = (target, prefer) else {
            continue;
        };
        if m.is_empty() {
            error(m_span, "match is empty".into());
            continue;
        }
        if let Err(e) = glob::Pattern::new(&m) {
            error(m_span, format!("match {m:?} is not a valid glob: {e}"));
            continue;
        }
        let line = super::line_col(text, m_span.start).0;
        if let Some(first) = seen.get(&m) {
            error(
                m_span,
                format!(
                    "a second [[workqueue]] rule for {m} (first at line {first}): a workqueue's preference is set once"
                ),
            );
            continue;
        }
        seen.insert(m.clone(), line);
        match Preference::parse(&prefer, width) {
            // Nothing to take the node from: an error, not a silent
            // "housekeeping".
            Ok(Preference::OwnNode) => error(
                prefer_span,
                "prefer: a workqueue has no node of its own; name one (\"node:0\") or the CPUs"
                    .into(),
            ),
            Ok(prefer) => rules.push(WorkqueueRule {
                target: m.as_str().into(),
                prefer,
                line,
            }),
            Err(e) => {
                let hint = did_you_mean(&prefer, &["housekeeping"]);
                error(prefer_span, format!("prefer: {e}{hint}"));
            }
        }
    }
    rules
}

/// Rules that name none of `names`: a warning, not an error (the module
/// that makes the workqueue may be loaded later).
pub fn unmatched_workqueue_rules<'a>(
    rules: &'a [WorkqueueRule],
    names: &[String],
) -> Vec<&'a WorkqueueRule> {
    rules
        .iter()
        .filter(|r| !names.iter().any(|n| r.target.matches(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Config, CpuSet};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "rules.toml", 8).map_err(|e| e.to_string())
    }

    #[test]
    fn globs_in_order() {
        let c = parse(
            "[[workqueue]]\nmatch = \"writeback\"\nprefer = \"0-1\"\n\n[[workqueue]]\nmatch = \"blkcg*\"\nprefer = \"housekeeping\"\n",
        )
        .unwrap();
        assert_eq!(
            c.workqueue,
            [
                WorkqueueRule {
                    target: "writeback".into(),
                    prefer: Preference::Cpus(CpuSet::parse("0-1", 8).unwrap()),
                    line: 2
                },
                WorkqueueRule {
                    target: "blkcg*".into(),
                    prefer: Preference::Housekeeping,
                    line: 6
                },
            ]
        );
        assert!(c.rules.is_empty() && c.irq.is_empty());
        let names = ["writeback".to_string(), "power".to_string()];
        let unmatched: Vec<_> = unmatched_workqueue_rules(&c.workqueue, &names)
            .iter()
            .map(|r| r.line)
            .collect();
        assert_eq!(unmatched, [6]);
    }

    #[test]
    fn every_bad_rule_is_named_by_its_line() {
        let e = parse(
            "[[workqueue]]\nmatch = \"writeback\"\nprefer = \"0\"\n[[workqueue]]\nmatch = \"writeback\"\nprefer = \"1\"\n[[workqueue]]\nmatch = 3\nprefer = \"0\"\n[[workqueue]]\nprefer = \"0\"\n[[workqueue]]\nmatch = \"a\"\nprefer = \"node\"\n[[workqueue]]\nmatch = \"b\"\nprefer = \"housekeping\"\n[[workqueue]]\nmatch = \"[x\"\nprefer = \"0\"\n[[workqueue]]\nmatch = \"c\"\nprefr = \"0\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "rules.toml:5:9: a second [[workqueue]] rule for writeback (first at line 2): a workqueue's preference is set once",
                "rules.toml:8:9: match must be a string such as \"writeback\", not an integer",
                "rules.toml:10:1: a [[workqueue]] rule needs `match = \"workqueue name glob\"`",
                "rules.toml:14:10: prefer: a workqueue has no node of its own; name one (\"node:0\") or the CPUs",
                "rules.toml:17:10: prefer: expected a CPU number, found 'h' at character 1 of \"housekeping\"; a preference is a cpulist such as \"0-3\", \"housekeeping\", \"node\" or \"node:N\"; did you mean \"housekeeping\"?",
                "rules.toml:19:9: match \"[x\" is not a valid glob: Pattern syntax error near position 0: invalid range pattern",
                "rules.toml:21:1: missing field `prefer`",
                "rules.toml:23:1: unknown field `prefr`, expected one of `match`, `prefer`; did you mean \"prefer\"?",
            ]
        );
    }
}
