//! The rules file: which kthreads prefer which CPUs.
//!
//! ```toml
//! [housekeeping]
//! cpus = "auto"          # or a cpulist
//!
//! [[rule]]
//! match = "kswapd*"      # comm glob; or pid = 45
//! prefer = "node"        # "node", "node:1", "housekeeping", or a cpulist
//!
//! [[irq]]                # see config/irq.rs
//! match = "nvme*"
//! prefer = "node"
//!
//! [[workqueue]]          # see config/workqueue.rs
//! match = "writeback"
//! prefer = "housekeeping"
//! ```

mod irq;
mod suggest;
mod table;
mod workqueue;

use std::{collections::HashMap, fmt, ops::Range};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

pub use self::irq::{IrqRule, IrqTarget};
use self::suggest::did_you_mean;
use self::table::{Fields, RawTable};
pub use self::workqueue::{WorkqueueRule, unmatched_workqueue_rules};
use super::{CpuListError, CpuSet, Topology};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Preference {
    Cpus(CpuSet),
    Housekeeping,
    Node(u32),
    /// The node in the kthread's own name (kswapd1 → node 1).
    OwnNode,
}

/// Why a `prefer` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PreferenceError {
    #[error("{node:?} is not a node number (in {text:?})")]
    Node { node: String, text: String },
    #[error(
        "{0}; a preference is a cpulist such as \"0-3\", \"housekeeping\", \"node\" or \"node:N\""
    )]
    Cpus(CpuListError),
}

impl Preference {
    pub fn parse(text: &str, width: u32) -> Result<Self, PreferenceError> {
        let t = text.trim();
        match t {
            "housekeeping" => Ok(Preference::Housekeeping),
            "node" => Ok(Preference::OwnNode),
            _ => {
                if let Some(n) = t.strip_prefix("node:") {
                    return n
                        .parse()
                        .map(Preference::Node)
                        .map_err(|_| PreferenceError::Node {
                            node: n.to_string(),
                            text: t.to_string(),
                        });
                }
                CpuSet::parse(t, width)
                    .map(Preference::Cpus)
                    .map_err(PreferenceError::Cpus)
            }
        }
    }
}

impl fmt::Display for Preference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Preference::Cpus(s) => write!(f, "{s}"),
            Preference::Housekeeping => f.write_str("housekeeping"),
            Preference::Node(n) => write!(f, "node:{n}"),
            Preference::OwnNode => f.write_str("node"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pid(u32),
    /// A glob on the comm (`kswapd*`); a plain name matches only itself.
    Comm(CommGlob),
}

/// A comm glob, compiled once: matching runs for every kthread on every
/// registration and rescan.
#[derive(Clone, Debug)]
pub struct CommGlob {
    text: String,
    /// None when the text is not a valid glob: then it matches itself only.
    pattern: Option<glob::Pattern>,
}

impl CommGlob {
    pub fn new(text: &str) -> CommGlob {
        CommGlob {
            text: text.to_string(),
            pattern: glob::Pattern::new(text).ok(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, comm: &str) -> bool {
        match &self.pattern {
            Some(p) => p.matches(comm),
            None => self.text == comm,
        }
    }
}

impl PartialEq for CommGlob {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for CommGlob {}

impl From<&str> for CommGlob {
    fn from(text: &str) -> Self {
        CommGlob::new(text)
    }
}

impl From<String> for CommGlob {
    fn from(text: String) -> Self {
        CommGlob::new(&text)
    }
}

impl Target {
    pub fn matches(&self, pid: u32, comm: &str) -> bool {
        match self {
            Target::Pid(p) => *p == pid,
            Target::Comm(glob) => glob.matches(comm),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Pid(p) => write!(f, "pid {p}"),
            Target::Comm(c) => f.write_str(c.as_str()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub prefer: Preference,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HousekeepingSpec {
    /// Every possible CPU but those the kernel isolates through `sources`,
    /// read from the kernel (and re-read: partitions change at run time).
    Auto(IsolationSources),
    Cpus(CpuSet),
}

/// Which of the kernel's isolation settings take CPUs out of `auto`
/// housekeeping (`[housekeeping] sources`); all three by default, as the
/// kernel's own kthread policy counts domain isolation and nohz_full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsolationSources {
    /// `isolcpus=` (domain isolation; /sys/devices/system/cpu/isolated).
    pub isolcpus: bool,
    /// `nohz_full=`.
    pub nohz_full: bool,
    /// cgroup v2 isolated partitions (`cpuset.cpus.isolated`), at run time.
    pub partitions: bool,
}

impl IsolationSources {
    pub const ALL: IsolationSources = IsolationSources {
        isolcpus: true,
        nohz_full: true,
        partitions: true,
    };
    /// The names a rules file uses, in the order they are listed.
    pub const NAMES: [&'static str; 3] = ["isolcpus", "nohz_full", "partitions"];

    /// The names of the sources that count, as a rules file lists them.
    pub fn names(&self) -> Vec<&'static str> {
        [self.isolcpus, self.nohz_full, self.partitions]
            .iter()
            .zip(Self::NAMES)
            .filter(|(on, _)| **on)
            .map(|(_, n)| n)
            .collect()
    }
}

impl Default for IsolationSources {
    fn default() -> Self {
        Self::ALL
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub housekeeping: HousekeepingSpec,
    pub rules: Vec<Rule>,
    /// `[[irq]]` rules, tried in order like `rules`.
    pub irq: Vec<IrqRule>,
    /// `[[workqueue]]` rules, tried in order like `rules`.
    pub workqueue: Vec<WorkqueueRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every error found in one file, each as `origin:line:col: message`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub origin: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.origin, e.line, e.column, e.message)?;
        }
        Ok(())
    }
}

/// The file's shape: the tables themselves are read key by key (see
/// [`table`]), so each wrong key or value is its own error.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    housekeeping: Option<Spanned<RawTable>>,
    #[serde(default)]
    rule: Vec<Spanned<RawTable>>,
    #[serde(default)]
    irq: Vec<Spanned<RawTable>>,
    #[serde(default)]
    workqueue: Vec<Spanned<RawTable>>,
}

/// What a preference looks like, for type errors.
const PREFER_EXAMPLE: &str = "\"housekeeping\", \"node\" or \"0-3\"";

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, col)
}

/// `sources = ["isolcpus", "nohz_full", "partitions"]`: an array of
/// distinct source names (empty: no kernel isolation counts). Errors are
/// reported at the array.
fn isolation_sources(
    span: &Range<usize>,
    value: &toml::Value,
    error: &mut impl FnMut(Range<usize>, String),
) -> IsolationSources {
    let none = IsolationSources {
        isolcpus: false,
        nohz_full: false,
        partitions: false,
    };
    let expected = IsolationSources::NAMES.map(|n| format!("{n:?}")).join(", ");
    let toml::Value::Array(items) = value else {
        error(
            span.clone(),
            format!(
                "housekeeping sources must be an array of {expected}, not {}",
                table::a(value)
            ),
        );
        return IsolationSources::ALL;
    };
    let mut out = none;
    for item in items {
        let Some(name) = item.as_str() else {
            error(
                span.clone(),
                format!(
                    "housekeeping sources: {} is not one of {expected}",
                    table::a(item)
                ),
            );
            continue;
        };
        let flag = match name {
            "isolcpus" => &mut out.isolcpus,
            "nohz_full" => &mut out.nohz_full,
            "partitions" => &mut out.partitions,
            other => {
                let hint = did_you_mean(other, &IsolationSources::NAMES);
                error(
                    span.clone(),
                    format!(
                        "housekeeping sources: unknown source {other:?}, expected one of {expected}{hint}"
                    ),
                );
                continue;
            }
        };
        if *flag {
            error(
                span.clone(),
                format!("housekeeping sources: {name:?} is listed twice"),
            );
        }
        *flag = true;
    }
    out
}

impl Config {
    /// Parses a rules file. `origin` names it in messages; `width` bounds CPU ids.
    pub fn parse(text: &str, origin: &str, width: u32) -> Result<Config, ConfigErrors> {
        let mut errors = Vec::new();
        let mut error = |span: Range<usize>, message: String| {
            let (line, column) = line_col(text, span.start);
            errors.push(ConfigError {
                line,
                column,
                message,
            });
        };
        if text.trim().is_empty() {
            error(
                0..0,
                "the file is empty: expected [housekeeping] and/or [[rule]] tables".into(),
            );
            return Err(ConfigErrors {
                origin: origin.into(),
                errors,
            });
        }
        if let Some(nul) = text.find('\0') {
            error(
                nul..nul,
                "the file contains NUL bytes: this is not a TOML text file".into(),
            );
            return Err(ConfigErrors {
                origin: origin.into(),
                errors,
            });
        }
        let raw: RawConfig = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                error(span, e.message().trim().to_string());
                return Err(ConfigErrors {
                    origin: origin.into(),
                    errors,
                });
            }
        };
        let mut sources = None;
        let cpus = raw.housekeeping.and_then(|h| {
            let span = h.span();
            let fields = Fields::of(h.into_inner(), &["cpus", "sources"], &mut error);
            sources = fields
                .value("sources")
                .map(|(span, v)| (span.clone(), isolation_sources(&span, v, &mut error)));
            match fields.string("cpus", "\"auto\" or \"0-1\"", &mut error) {
                Ok(Some(cpus)) => Some(cpus),
                Ok(None) => {
                    error(span, "missing field `cpus`".into());
                    None
                }
                Err(()) => None,
            }
        });
        let auto =
            HousekeepingSpec::Auto(sources.as_ref().map_or(IsolationSources::ALL, |(_, s)| *s));
        if let (Some((span, _)), Some((_, cpus))) = (&sources, &cpus)
            && cpus.trim() != "auto"
        {
            error(
                span.clone(),
                format!(
                    "housekeeping sources only apply to cpus = \"auto\"; cpus = {cpus:?} names the CPUs itself"
                ),
            );
        }
        let housekeeping = match cpus {
            None => auto.clone(),
            Some((_, cpus)) if cpus.trim() == "auto" => auto.clone(),
            Some((span, cpus)) => match CpuSet::parse(&cpus, width) {
                Ok(s) if s.is_empty() => {
                    error(
                        span,
                        "housekeeping cpus is empty: kthreads need somewhere to run".into(),
                    );
                    auto.clone()
                }
                Ok(s) => HousekeepingSpec::Cpus(s),
                Err(e) => {
                    let hint = did_you_mean(&cpus, &["auto"]);
                    error(span, format!("housekeeping cpus: {e}{hint}"));
                    auto.clone()
                }
            },
        };
        let mut rules = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for spanned in raw.rule {
            let span = spanned.span();
            let fields = Fields::of(
                spanned.into_inner(),
                &["match", "pid", "prefer"],
                &mut error,
            );
            let matcher = fields.string("match", "\"kswapd*\"", &mut error);
            let pid = match fields.value("pid") {
                None => Ok(None),
                Some((span, toml::Value::Integer(n))) => match u32::try_from(*n) {
                    Ok(n) => Ok(Some((span, n))),
                    Err(_) => {
                        error(span, format!("pid {n} is not a pid"));
                        Err(())
                    }
                },
                Some((span, other)) => {
                    error(
                        span,
                        format!("pid must be an integer, not {}", table::a(other)),
                    );
                    Err(())
                }
            };
            let prefer = match fields.string("prefer", PREFER_EXAMPLE, &mut error) {
                Ok(Some(p)) => Some(p),
                Ok(None) => {
                    error(span.clone(), "missing field `prefer`".into());
                    None
                }
                Err(()) => None,
            };
            let (Ok(matcher), Ok(pid)) = (matcher, pid) else {
                continue;
            };
            let target = match (matcher, pid) {
                (Some((m_span, pattern)), None) => {
                    if pattern.is_empty() {
                        error(m_span, "match is empty".into());
                        continue;
                    }
                    if let Err(e) = glob::Pattern::new(&pattern) {
                        error(
                            m_span,
                            format!("match {pattern:?} is not a valid glob: {e}"),
                        );
                        continue;
                    }
                    (Target::Comm(pattern.into()), m_span)
                }
                (None, Some((p_span, p))) => (Target::Pid(p), p_span),
                (Some((m_span, _)), Some(_)) => {
                    error(
                        m_span,
                        "a rule has either `match` or `pid`, not both".into(),
                    );
                    continue;
                }
                (None, None) => {
                    error(
                        span,
                        "a rule needs `match = \"comm glob\"` or `pid = N`".into(),
                    );
                    continue;
                }
            };
            let Some((prefer_span, prefer)) = prefer else {
                continue;
            };
            let (target, target_span) = target;
            let key = target.to_string();
            let (line, _) = line_col(text, target_span.start);
            if let Some(first) = seen.get(&key) {
                error(
                    target_span,
                    format!(
                        "a second rule for {key} (first at line {first}): a kthread's preference is set once"
                    ),
                );
                continue;
            }
            seen.insert(key, line);
            match Preference::parse(&prefer, width) {
                Ok(prefer) => rules.push(Rule { target, prefer }),
                Err(e) => {
                    let hint = did_you_mean(&prefer, &["housekeeping", "node"]);
                    error(prefer_span, format!("prefer: {e}{hint}"));
                }
            }
        }
        let irq = irq::irq_rules(raw.irq, text, width, &mut error);
        let workqueue = workqueue::workqueue_rules(raw.workqueue, text, width, &mut error);
        // In the file's order, whichever table each came from.
        errors.sort_by_key(|e| (e.line, e.column));
        if errors.is_empty() {
            Ok(Config {
                housekeeping,
                rules,
                irq,
                workqueue,
            })
        } else {
            Err(ConfigErrors {
                origin: origin.into(),
                errors,
            })
        }
    }

    /// Checks what only a machine can tell: that the nodes named exist.
    pub fn validate(
        &self,
        text: &str,
        origin: &str,
        topology: &Topology,
    ) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        let irq = self.irq.iter().map(|r| (r.target.to_string(), &r.prefer));
        let kthread = self.rules.iter().map(|r| (r.target.to_string(), &r.prefer));
        let workqueue = self
            .workqueue
            .iter()
            .map(|r| (r.target.as_str().to_string(), &r.prefer));
        for (target, prefer) in kthread.chain(irq).chain(workqueue) {
            if let Preference::Node(n) = *prefer
                && !topology.nodes.contains_key(&n)
            {
                let needle = format!("node:{n}");
                let (line, column) = text.find(&needle).map_or((0, 0), |o| line_col(text, o));
                let known: Vec<String> = topology.nodes.keys().map(u32::to_string).collect();
                errors.push(ConfigError {
                    line,
                    column,
                    message: format!(
                        "rule for {target}: node {n} does not exist on this machine (nodes: {})",
                        known.join(", ")
                    ),
                });
            }
            if let Preference::Cpus(cpus) = prefer {
                let missing = cpus.and_not(&topology.possible);
                if !missing.is_empty() {
                    let needle = target.strip_prefix("irq ").unwrap_or(&target);
                    let (line, column) = text.find(needle).map_or((0, 0), |o| line_col(text, o));
                    errors.push(ConfigError {
                        line,
                        column,
                        message: format!("rule for {target}: CPUs {missing} are not possible on this machine (possible: {})", topology.possible),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                origin: origin.into(),
                errors,
            })
        }
    }

    /// The kernel 7.0 policy: node-created kthreads prefer their node, every
    /// other unbound kthread prefers housekeeping. [`DEFAULT_TOML`] is the
    /// same policy as a rules file; a test keeps the two equal.
    pub fn embedded_default() -> Config {
        Config {
            housekeeping: HousekeepingSpec::Auto(IsolationSources::ALL),
            rules: vec![
                Rule {
                    target: Target::Comm("kswapd*".into()),
                    prefer: Preference::OwnNode,
                },
                Rule {
                    target: Target::Comm("kcompactd*".into()),
                    prefer: Preference::OwnNode,
                },
                Rule {
                    target: Target::Comm("*".into()),
                    prefer: Preference::Housekeeping,
                },
            ],
            irq: Vec::new(),
            workqueue: Vec::new(),
        }
    }
}

/// The embedded default as a rules file, for `affinity config --default`.
pub const DEFAULT_TOML: &str = r#"# affinity's embedded default policy (the kernel 7.0 behaviour): kthreads
# created for a NUMA node prefer that node; every other unbound kthread
# prefers the housekeeping CPUs.

[housekeeping]
cpus = "auto"
# What takes CPUs out of "auto": isolcpus= (domain isolation), nohz_full=,
# and cgroup v2 isolated partitions (re-read as they change).
sources = ["isolcpus", "nohz_full", "partitions"]

[[rule]]
match = "kswapd*"
prefer = "node"

[[rule]]
match = "kcompactd*"
prefer = "node"

[[rule]]
match = "*"
prefer = "housekeeping"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn housekeeping_sources_choose_what_auto_leaves_out() {
        let hk = |text: &str| Config::parse(text, "t", 8).map(|c| c.housekeeping);
        assert_eq!(
            hk("[housekeeping]\ncpus = \"auto\"\nsources = [\"nohz_full\"]\n"),
            Ok(HousekeepingSpec::Auto(IsolationSources {
                isolcpus: false,
                nohz_full: true,
                partitions: false,
            }))
        );
        assert_eq!(
            hk("[housekeeping]\ncpus = \"auto\"\nsources = []\n").unwrap(),
            HousekeepingSpec::Auto(IsolationSources {
                isolcpus: false,
                nohz_full: false,
                partitions: false,
            })
        );
        assert_eq!(
            hk("[housekeeping]\ncpus = \"auto\"\n").unwrap(),
            HousekeepingSpec::Auto(IsolationSources::ALL)
        );
        let errors = |text: &str| -> Vec<String> {
            Config::parse(text, "t", 8)
                .unwrap_err()
                .errors
                .into_iter()
                .map(|e| format!("{}:{} {}", e.line, e.column, e.message))
                .collect()
        };
        assert_eq!(
            errors(
                "[housekeeping]\ncpus = \"auto\"\nsources = [\"nohz-full\", \"isolcpus\", \"isolcpus\", 3]\n"
            ),
            [
                "3:11 housekeeping sources: unknown source \"nohz-full\", expected one of \"isolcpus\", \"nohz_full\", \"partitions\"; did you mean \"nohz_full\"?",
                "3:11 housekeeping sources: \"isolcpus\" is listed twice",
                "3:11 housekeeping sources: an integer is not one of \"isolcpus\", \"nohz_full\", \"partitions\"",
            ]
        );
        assert_eq!(
            errors("[housekeeping]\ncpus = \"0-1\"\nsources = [\"nohz_full\"]\n"),
            [
                "3:11 housekeeping sources only apply to cpus = \"auto\"; cpus = \"0-1\" names the CPUs itself"
            ]
        );
        assert_eq!(
            errors("[housekeeping]\ncpus = \"auto\"\nsources = \"nohz_full\"\n"),
            [
                "3:11 housekeeping sources must be an array of \"isolcpus\", \"nohz_full\", \"partitions\", not a string"
            ]
        );
    }

    #[test]
    fn close_misspellings_of_keywords_get_a_suggestion() {
        let e = err("[housekeeping]\ncpus = \"atuo\"\n");
        assert!(e.contains("did you mean \"auto\"?"), "{e}");
        let e = err("[[rule]]\nmatch = \"x\"\nprefer = \"housekeping\"\n");
        assert!(e.contains("did you mean \"housekeeping\"?"), "{e}");
        let e = err("[[rule]]\nmatch = \"x\"\nprefer = \"nod\"\n");
        assert!(e.contains("did you mean \"node\"?"), "{e}");
        let e = err("[[rule]]\nmatch = \"x\"\nprefer = \"0-z\"\n");
        assert!(!e.contains("did you mean"), "{e}");
    }

    #[test]
    fn the_printed_default_is_the_embedded_default() {
        assert_eq!(
            Config::parse(DEFAULT_TOML, "default", 8).unwrap(),
            Config::embedded_default()
        );
    }

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, "rules.toml", 8)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = parse("[housekeeping]\ncpus = \"0-1\"\n\n[[rule]]\nmatch = \"kswapd*\"\nprefer = \"node\"\n\n[[rule]]\npid = 45\nprefer = \"2-3\"\n").unwrap();
        assert_eq!(
            c.housekeeping,
            HousekeepingSpec::Cpus(CpuSet::parse("0-1", 8).unwrap())
        );
        assert_eq!(
            c.rules[0],
            Rule {
                target: Target::Comm("kswapd*".into()),
                prefer: Preference::OwnNode
            }
        );
        assert_eq!(c.rules[1].target, Target::Pid(45));
    }

    #[test]
    fn every_error_has_a_line_and_column() {
        let e = err(
            "[[rule]]\nmatch = \"a\"\nprefer = \"3-1\"\n\n[[rule]]\nmatch = \"b\"\nprefer = \"node:x\"\n",
        );
        assert!(
            e.contains("rules.toml:3:10: prefer: range 3-1 ends before it starts"),
            "{e}"
        );
        assert!(
            e.contains("rules.toml:7:10: prefer: \"x\" is not a node number"),
            "{e}"
        );
    }

    #[test]
    fn rejects_unknown_keys_duplicates_empty_and_garbage() {
        assert!(
            err("[[rule]]\nmatch = \"a\"\nprefer = \"1\"\ncolour = 1\n")
                .contains(":4:1: unknown field `colour`")
        );
        let e = err(
            "[[rule]]\nmatch = \"kswapd*\"\nprefer = \"1\"\n[[rule]]\nmatch = \"kswapd*\"\nprefer = \"0\"\n",
        );
        assert!(
            e.contains(":5:9: a second rule for kswapd* (first at line 2)"),
            "{e}"
        );
        assert!(err("\n  \n").contains(":1:1: the file is empty"));
        assert!(err("\u{1}\u{0}\u{7f}ELF").contains("NUL"));
        assert!(err("[[rule]]\nprefer = \"1\"\n").contains("needs `match"));
        assert!(err("[[rule]]\nmatch = \"a\"\npid = 3\nprefer = \"1\"\n").contains("not both"));
        assert!(err("[housekeeping]\ncpus = \"99\"\n").contains("beyond"));
    }

    #[test]
    fn every_schema_error_in_a_file_is_listed_in_order() {
        let e = err(concat!(
            "[housekeeping]\ncpus = 3\n\n",
            "[[rule]]\nmatch = \"a\"\nprefer = 1\n\n",
            "[[rule]]\nmatch = \"b\"\nprefer = \"0\"\ncolour = \"red\"\n\n",
            "[[rule]]\npid = \"x\"\nprefer = \"0\"\n\n",
            "[[rule]]\nmatch = \"[c\"\n\n",
            "[[irq]]\nmatch = 3\nprefre = \"0\"\n",
        ));
        assert_eq!(
            e.lines().collect::<Vec<_>>(),
            [
                "rules.toml:2:8: cpus must be a string such as \"auto\" or \"0-1\", not an integer",
                "rules.toml:6:10: prefer must be a string such as \"housekeeping\", \"node\" or \"0-3\", not an integer",
                "rules.toml:11:1: unknown field `colour`, expected one of `match`, `pid`, `prefer`",
                "rules.toml:14:7: pid must be an integer, not a string",
                "rules.toml:17:1: missing field `prefer`",
                "rules.toml:18:9: match \"[c\" is not a valid glob: Pattern syntax error near position 0: invalid range pattern",
                "rules.toml:20:1: missing field `prefer`",
                "rules.toml:22:1: unknown field `prefre`, expected one of `match`, `prefer`; did you mean \"prefer\"?",
            ]
        );
    }

    #[test]
    fn validate_names_missing_nodes() {
        let text = "[[rule]]\nmatch = \"a\"\nprefer = \"node:3\"\n";
        let c = parse(text).unwrap();
        let topo = Topology::single_node(CpuSet::full(8), CpuSet::full(8));
        let e = c
            .validate(text, "rules.toml", &topo)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "rules.toml:3:11: rule for a: node 3 does not exist on this machine (nodes: 0)"
            ),
            "{e}"
        );
    }

    #[test]
    fn globs_match_comms() {
        assert!(Target::Comm("kswapd*".into()).matches(1, "kswapd0"));
        assert!(!Target::Comm("kswapd".into()).matches(1, "kswapd0"));
        assert!(Target::Comm("irq/*-eth0".into()).matches(1, "irq/45-eth0"));
        assert!(Target::Pid(7).matches(7, "x"));
    }
}
