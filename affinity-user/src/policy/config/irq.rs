//! `[[irq]]` rules: which CPUs an interrupt prefers.
//!
//! ```toml
//! [[irq]]
//! match = "nvme*"        # a glob on an action name; or an IRQ number: match = 36
//! prefer = "node"        # the same values as [[rule]]: "node" is the IRQ's device node
//! ```

use std::{collections::HashMap, fmt, ops::Range};

use toml::Spanned;

use super::{
    CommGlob, Preference, did_you_mean,
    table::{self, Fields, RawTable},
};

/// What an `[[irq]]` rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IrqTarget {
    Number(u32),
    /// A glob on the names of the IRQ's actions (its handlers, as
    /// /proc/interrupts lists them): any one matching is enough.
    Action(CommGlob),
}

impl IrqTarget {
    pub fn matches(&self, number: u32, actions: &[String]) -> bool {
        match self {
            IrqTarget::Number(n) => *n == number,
            IrqTarget::Action(glob) => actions.iter().any(|a| glob.matches(a)),
        }
    }
}

impl fmt::Display for IrqTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IrqTarget::Number(n) => write!(f, "irq {n}"),
            IrqTarget::Action(g) => f.write_str(g.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IrqRule {
    pub target: IrqTarget,
    pub prefer: Preference,
    /// Where the rule's `match` is, for warnings about it later (a rule
    /// that matches no IRQ on the machine).
    pub line: usize,
}

/// Turns the raw `[[irq]]` tables into rules; every problem goes to
/// `error` with its span, and the rule is left out.
pub(super) fn irq_rules(
    raw: Vec<Spanned<RawTable>>,
    text: &str,
    width: u32,
    error: &mut impl FnMut(Range<usize>, String),
) -> Vec<IrqRule> {
    let mut rules = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for spanned in raw {
        let span = spanned.span();
        let fields = Fields::of(spanned.into_inner(), &["match", "prefer"], error);
        let prefer = match fields.string("prefer", super::PREFER_EXAMPLE, error) {
            Ok(Some(p)) => Some(p),
            Ok(None) => {
                error(span.clone(), "missing field `prefer`".into());
                None
            }
            Err(()) => None,
        };
        let Some((m_span, m)) = fields.value("match") else {
            error(
                span,
                "an [[irq]] rule needs `match = \"action glob\"` or `match = IRQ number`".into(),
            );
            continue;
        };
        let target = match m {
            toml::Value::Integer(n) => match u32::try_from(*n) {
                Ok(n) => IrqTarget::Number(n),
                Err(_) => {
                    error(m_span.clone(), format!("match {n} is not an IRQ number"));
                    continue;
                }
            },
            // An IRQ number written as a string means the number: no action
            // is named by digits alone.
            toml::Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                match s.parse() {
                    Ok(n) => IrqTarget::Number(n),
                    Err(_) => {
                        error(m_span.clone(), format!("match {s:?} is not an IRQ number"));
                        continue;
                    }
                }
            }
            toml::Value::String(s) if s.is_empty() => {
                error(m_span.clone(), "match is empty".into());
                continue;
            }
            toml::Value::String(s) => {
                if let Err(e) = glob::Pattern::new(s) {
                    error(
                        m_span.clone(),
                        format!("match {s:?} is not a valid glob: {e}"),
                    );
                    continue;
                }
                IrqTarget::Action(s.as_str().into())
            }
            other => {
                error(
                    m_span.clone(),
                    format!(
                        "match must be an action-name glob (\"nvme*\") or an IRQ number, not {}",
                        table::a(other)
                    ),
                );
                continue;
            }
        };
        let Some((prefer_span, prefer)) = prefer else {
            continue;
        };
        let line = super::line_col(text, m_span.start).0;
        let key = target.to_string();
        if let Some(first) = seen.get(&key) {
            error(
                m_span,
                format!(
                    "a second [[irq]] rule for {key} (first at line {first}): an IRQ's preference is set once"
                ),
            );
            continue;
        }
        seen.insert(key, line);
        match Preference::parse(&prefer, width) {
            Ok(prefer) => rules.push(IrqRule {
                target,
                prefer,
                line,
            }),
            Err(e) => {
                let hint = did_you_mean(&prefer, &["housekeeping", "node"]);
                error(prefer_span, format!("prefer: {e}{hint}"));
            }
        }
    }
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Config, CpuSet};

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "rules.toml", 8).map_err(|e| e.to_string())
    }

    #[test]
    fn globs_and_numbers_in_order() {
        let c = parse(
            "[[irq]]\nmatch = \"nvme*\"\nprefer = \"node\"\n\n[[irq]]\nmatch = 36\nprefer = \"0-1\"\n\n[[irq]]\nmatch = \"37\"\nprefer = \"housekeeping\"\n",
        )
        .unwrap();
        assert_eq!(
            c.irq,
            [
                IrqRule {
                    target: IrqTarget::Action("nvme*".into()),
                    prefer: Preference::OwnNode,
                    line: 2
                },
                IrqRule {
                    target: IrqTarget::Number(36),
                    prefer: Preference::Cpus(CpuSet::parse("0-1", 8).unwrap()),
                    line: 6
                },
                IrqRule {
                    target: IrqTarget::Number(37),
                    prefer: Preference::Housekeeping,
                    line: 10
                },
            ]
        );
        assert!(c.rules.is_empty());
    }

    #[test]
    fn matching_any_action() {
        let t = IrqTarget::Action("virtio*-input*".into());
        assert!(t.matches(5, &["ACPI:Ged".into(), "virtio4-input".into()]));
        assert!(!t.matches(5, &["virtio4-config".into()]));
        assert!(!t.matches(5, &[]));
        assert!(IrqTarget::Number(5).matches(5, &[]));
        assert!(!IrqTarget::Number(5).matches(6, &["5".into()]));
    }

    #[test]
    fn every_bad_rule_is_named_by_its_line() {
        let e = parse(
            "[[irq]]\nmatch = \"nvme*\"\nprefer = \"0\"\n[[irq]]\nmatch = \"nvme*\"\nprefer = \"1\"\n[[irq]]\nmatch = -3\nprefer = \"0\"\n[[irq]]\nprefer = \"0\"\n[[irq]]\nmatch = 4\nprefer = \"housekeping\"\n[[irq]]\nmatch = [1]\nprefer = \"0\"\n[[irq]]\nmatch = \"[x\"\nprefer = \"0\"\n",
        )
        .unwrap_err();
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "rules.toml:5:9: a second [[irq]] rule for nvme* (first at line 2): an IRQ's preference is set once",
                "rules.toml:8:9: match -3 is not an IRQ number",
                "rules.toml:10:1: an [[irq]] rule needs `match = \"action glob\"` or `match = IRQ number`",
                "rules.toml:14:10: prefer: expected a CPU number, found 'h' at character 1 of \"housekeping\"; a preference is a cpulist such as \"0-3\", \"housekeeping\", \"node\" or \"node:N\"; did you mean \"housekeeping\"?",
                "rules.toml:16:9: match must be an action-name glob (\"nvme*\") or an IRQ number, not an array",
                "rules.toml:19:9: match \"[x\" is not a valid glob: Pattern syntax error near position 0: invalid range pattern",
            ]
        );
        assert!(
            parse("[[irq]]\nmatch = 1\nprefer = \"0\"\nirq = 2\n")
                .unwrap_err()
                .contains("rules.toml:4:1: unknown field `irq`")
        );
    }
}
