//! Reports about the masks that are not a thread's: IRQs, the default IRQ
//! affinity, the workqueue cpumasks (global, and a named workqueue's with
//! `workqueue` naming it). One shape for them all, named `<file>_<kind>` on
//! the wire: `irq_set`, `irq_kernel_managed`, `workqueue_set`,
//! `irq_default_would_set`…

use serde::{Serialize, Serializer};

use crate::policy::MaskFile;

#[derive(Clone, Debug, PartialEq)]
pub struct SteerReport {
    pub file: MaskFile,
    /// The IRQ's action names; empty for the other two files.
    pub actions: Vec<String>,
    pub kind: SteerKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SteerKind {
    /// In place; `mask` and `effective` as read back.
    Set {
        mask: String,
        effective: Option<String>,
    },
    /// `--observe`: what would have been written.
    WouldSet {
        mask: String,
    },
    /// Written, but read back as `mask`/`effective` outside `desired`.
    Mismatch {
        desired: String,
        mask: String,
        effective: Option<String>,
    },
    /// The kernel manages this IRQ (EIO/EPERM): reported once, never written.
    KernelManaged,
    Refused {
        mask: String,
        message: String,
    },
}

#[derive(Serialize)]
struct Flat<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    irq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actions: Option<&'a [String]>,
    /// A named workqueue's name (none: the global workqueue cpumask).
    #[serde(skip_serializing_if = "Option::is_none")]
    workqueue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    desired: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mask: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

impl SteerReport {
    fn prefix(&self) -> &'static str {
        match self.file {
            MaskFile::Irq(_) => "irq",
            MaskFile::IrqDefault => "irq_default",
            MaskFile::Workqueue | MaskFile::NamedWorkqueue(_) => "workqueue",
        }
    }

    /// The `type`, also the human line's first word.
    pub fn kind(&self) -> String {
        let suffix = match self.kind {
            SteerKind::Set { .. } => "set",
            SteerKind::WouldSet { .. } => "would_set",
            SteerKind::Mismatch { .. } => "mismatch",
            SteerKind::KernelManaged => "kernel_managed",
            SteerKind::Refused { .. } => "refused",
        };
        format!("{}_{suffix}", self.prefix())
    }

    fn flat(&self) -> Flat<'_> {
        let irq = match self.file {
            MaskFile::Irq(n) => Some(n),
            _ => None,
        };
        let mut f = Flat {
            kind: self.kind(),
            irq,
            actions: irq.map(|_| self.actions.as_slice()),
            workqueue: match &self.file {
                MaskFile::NamedWorkqueue(n) => Some(n.as_str()),
                _ => None,
            },
            desired: None,
            mask: None,
            effective: None,
            message: None,
        };
        match &self.kind {
            SteerKind::Set { mask, effective } => {
                f.mask = Some(mask);
                f.effective = effective.as_deref();
            }
            SteerKind::WouldSet { mask } => f.mask = Some(mask),
            SteerKind::Mismatch {
                desired,
                mask,
                effective,
            } => {
                f.desired = Some(desired);
                f.mask = Some(mask);
                f.effective = effective.as_deref();
            }
            SteerKind::KernelManaged => {}
            SteerKind::Refused { mask, message } => {
                f.mask = Some(mask);
                f.message = Some(message);
            }
        }
        f
    }

    /// (colour, text) of the human line.
    pub fn human(&self) -> (&'static str, String) {
        let what = match self.file {
            MaskFile::Irq(n) if self.actions.is_empty() => format!("irq {n}"),
            MaskFile::Irq(n) => format!("irq {n} ({})", self.actions.join(", ")),
            MaskFile::IrqDefault => "default IRQ affinity".into(),
            MaskFile::Workqueue => "workqueue cpumask".into(),
            MaskFile::NamedWorkqueue(n) => format!("workqueue {n} cpumask"),
        };
        let eff = |e: &Option<String>| {
            e.as_ref()
                .map_or(String::new(), |e| format!(", delivered on {e}"))
        };
        match &self.kind {
            SteerKind::Set { mask, effective } => {
                ("32", format!("{what} -> {mask}{}", eff(effective)))
            }
            SteerKind::WouldSet { mask } => ("33", format!("{what} -> {mask} (observe)")),
            SteerKind::Mismatch {
                desired,
                mask,
                effective,
            } => (
                "1;33",
                format!(
                    "{what} -> {desired}, but the kernel has {mask}{}{}",
                    eff(effective),
                    // The mask took; only the delivery lags.
                    if mask == desired && effective.is_some() {
                        " (x86 without interrupt remapping moves an IRQ at its next interrupt, which still arrives there)"
                    } else {
                        ""
                    }
                ),
            ),
            SteerKind::KernelManaged => (
                "2",
                format!("{what} affinity managed by the kernel itself, not steered"),
            ),
            SteerKind::Refused { mask, message } => {
                ("1;31", format!("{what} -> {mask} refused: {message}"))
            }
        }
    }
}

impl Serialize for SteerReport {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.flat().serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::report::{Format, Report, Reporter};

    fn json(r: SteerReport) -> serde_json::Value {
        let mut v = serde_json::to_value(Report::Steer(r)).unwrap();
        v.as_object_mut().unwrap().remove("ts");
        v
    }

    #[test]
    fn json_shapes() {
        let irq = |kind| SteerReport {
            file: MaskFile::Irq(36),
            actions: vec!["virtio1-req.0".into()],
            kind,
        };
        assert_eq!(
            json(irq(SteerKind::Set {
                mask: "0".into(),
                effective: Some("0".into())
            })),
            serde_json::json!({"type": "irq_set", "irq": 36, "actions": ["virtio1-req.0"], "mask": "0", "effective": "0"})
        );
        assert_eq!(
            json(irq(SteerKind::KernelManaged)),
            serde_json::json!({"type": "irq_kernel_managed", "irq": 36, "actions": ["virtio1-req.0"]})
        );
        assert_eq!(
            json(irq(SteerKind::Mismatch {
                desired: "0".into(),
                mask: "0".into(),
                effective: Some("1".into())
            })),
            serde_json::json!({"type": "irq_mismatch", "irq": 36, "actions": ["virtio1-req.0"], "desired": "0", "mask": "0", "effective": "1"})
        );
        assert_eq!(
            json(SteerReport {
                file: MaskFile::Workqueue,
                actions: vec![],
                kind: SteerKind::Set {
                    mask: "0".into(),
                    effective: None
                }
            }),
            serde_json::json!({"type": "workqueue_set", "mask": "0"})
        );
        assert_eq!(
            json(SteerReport {
                file: MaskFile::IrqDefault,
                actions: vec![],
                kind: SteerKind::Refused {
                    mask: "0".into(),
                    message: "EINVAL".into()
                }
            }),
            serde_json::json!({"type": "irq_default_refused", "mask": "0", "message": "EINVAL"})
        );
    }

    #[test]
    fn human_lines_say_what_and_where() {
        let mut rep = Reporter::new(Vec::new(), Format::Human, false);
        rep.report(&Report::Steer(SteerReport {
            file: MaskFile::Irq(36),
            actions: vec!["virtio1-req.0".into()],
            kind: SteerKind::Set {
                mask: "0".into(),
                effective: Some("0".into()),
            },
        }));
        rep.report(&Report::Steer(SteerReport {
            file: MaskFile::Workqueue,
            actions: vec![],
            kind: SteerKind::WouldSet { mask: "0".into() },
        }));
        for mask in ["0", "0-1"] {
            rep.report(&Report::Steer(SteerReport {
                file: MaskFile::Irq(4),
                actions: vec!["ttyS0".into()],
                kind: SteerKind::Mismatch {
                    desired: "0".into(),
                    mask: mask.into(),
                    effective: Some("3".into()),
                },
            }));
        }
        let out = String::from_utf8(rep.into_inner()).unwrap();
        let lines: Vec<&str> = out.lines().map(|l| &l[13..]).collect();
        assert_eq!(
            lines,
            [
                "irq_set    irq 36 (virtio1-req.0) -> 0, delivered on 0",
                "workqueue_would_set workqueue cpumask -> 0 (observe)",
                "irq_mismatch irq 4 (ttyS0) -> 0, but the kernel has 0, delivered on 3 (x86 without interrupt remapping moves an IRQ at its next interrupt, which still arrives there)",
                "irq_mismatch irq 4 (ttyS0) -> 0, but the kernel has 0-1, delivered on 3",
            ]
        );
    }
}
