//! CPU sets of any width up to [`MAX_CPUS`], in the kernel's cpulist syntax.
//!
//! The width (how many CPU ids a set can hold, the kernel's nr_cpu_ids) is a
//! value of each set, never a global: one process can plan for an 8192-CPU
//! snapshot while running on a 2-CPU machine.

use std::fmt;

use thiserror::Error;

/// The kernel's largest NR_CPUS.
pub const MAX_CPUS: u32 = 8192;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CpuSet {
    width: u32,
    words: Vec<u64>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{message} at character {position} of {input:?}")]
pub struct CpuListError {
    pub input: String,
    /// 1-based character position of the offending text.
    pub position: usize,
    pub message: String,
}

fn words_for(width: u32) -> usize {
    width.div_ceil(64) as usize
}

impl CpuSet {
    pub fn empty(width: u32) -> Self {
        let width = width.min(MAX_CPUS);
        CpuSet {
            width,
            words: vec![0; words_for(width)],
        }
    }

    pub fn full(width: u32) -> Self {
        let mut s = Self::empty(width);
        for w in &mut s.words {
            *w = u64::MAX;
        }
        s.trim();
        s
    }

    /// Clears bits at or beyond `width` in the last word.
    fn trim(&mut self) {
        let rem = self.width % 64;
        if rem != 0
            && let Some(last) = self.words.last_mut()
        {
            *last &= (1u64 << rem) - 1;
        }
    }

    /// Parses the kernel's cpulist syntax: `0-3,8,10-15:2/4`, or "" for the
    /// empty set. Surrounding whitespace (a trailing newline from sysfs) is
    /// ignored. `width` bounds the CPU ids accepted.
    pub fn parse(list: &str, width: u32) -> Result<Self, CpuListError> {
        let mut set = Self::empty(width);
        let lead = list.len() - list.trim_start().len();
        let body = list.trim();
        if body.is_empty() {
            return Ok(set);
        }
        let err = |offset: usize, message: String| CpuListError {
            input: list.trim_end().to_string(),
            position: list[..(lead + offset).min(list.len())].chars().count() + 1,
            message,
        };
        // taskset and irqbalance users write masks; say what the list would be.
        if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
            let hint = match Self::parse_mask(hex, width) {
                Ok(set) if !set.is_empty() => format!(", write the CPU list {set}"),
                _ => String::new(),
            };
            return Err(err(
                0,
                format!(
                    "{body:?} looks like a hex CPU mask; a CPU list is expected here (like 0-3,8){hint}"
                ),
            ));
        }
        let mut offset = 0;
        for group in body.split(',') {
            set.parse_group(group, offset, &err)?;
            offset += group.len() + 1;
        }
        Ok(set)
    }

    fn parse_group(
        &mut self,
        group: &str,
        base: usize,
        err: &impl Fn(usize, String) -> CpuListError,
    ) -> Result<(), CpuListError> {
        let mut p = Parser {
            s: group.as_bytes(),
            i: 0,
        };
        let number = |p: &mut Parser, what: &str| -> Result<u32, CpuListError> {
            let start = p.i;
            while p.i < p.s.len() && p.s[p.i].is_ascii_digit() {
                p.i += 1;
            }
            if start == p.i {
                return Err(match p.s.get(p.i) {
                    Some(&c) => err(
                        base + p.i,
                        format!("expected {what}, found {:?}", c as char),
                    ),
                    None => err(base + p.i, format!("expected {what} after {:?}", group)),
                });
            }
            group[start..p.i].parse::<u32>().map_err(|_| {
                err(
                    base + start,
                    format!("{what} {} is too large", &group[start..p.i]),
                )
            })
        };
        let first_at = p.i;
        let first = number(&mut p, "a CPU number")?;
        let mut last = first;
        let mut stride = (1, 1);
        if p.eat(b'-') {
            let last_at = p.i;
            last = number(&mut p, "the end of the range")?;
            if last < first {
                return Err(err(
                    base + last_at,
                    format!("range {first}-{last} ends before it starts"),
                ));
            }
            if p.eat(b':') {
                let used = number(&mut p, "the number of CPUs used per group")?;
                if !p.eat(b'/') {
                    return Err(err(base + p.i, "expected '/' and a group size".into()));
                }
                let size_at = p.i;
                let size = number(&mut p, "a group size")?;
                if size == 0 || used == 0 || used > size {
                    return Err(err(
                        base + size_at,
                        format!("group {used}/{size} needs 0 < {used} <= {size}"),
                    ));
                }
                stride = (used, size);
            }
        }
        if p.i < p.s.len() {
            return Err(err(
                base + p.i,
                format!("unexpected {:?}", p.s[p.i] as char),
            ));
        }
        if last >= self.width {
            let at = if last == first {
                first_at
            } else {
                group
                    .rfind(|c: char| !c.is_ascii_digit())
                    .map_or(first_at, |i| i + 1)
            };
            return Err(err(
                base + at,
                format!(
                    "CPU {last} is beyond this machine's {} CPUs (0-{})",
                    self.width,
                    self.width.saturating_sub(1)
                ),
            ));
        }
        let (used, size) = stride;
        let mut start = first;
        while start <= last {
            let end = (start + used - 1).min(last);
            self.insert_range(start, end);
            start = match start.checked_add(size) {
                Some(s) => s,
                None => break,
            };
        }
        Ok(())
    }

    /// Sets `first..=last` a word at a time.
    fn insert_range(&mut self, first: u32, last: u32) {
        let (fw, lw) = ((first / 64) as usize, (last / 64) as usize);
        for w in fw..=lw {
            let lo = if w == fw { first % 64 } else { 0 };
            let hi = if w == lw { last % 64 } else { 63 };
            let bits = (u64::MAX >> (63 - hi)) & (u64::MAX << lo);
            self.words[w] |= bits;
        }
    }

    /// Parses the kernel's hex mask format, `ff,ffffffff` (32-bit groups,
    /// most significant first), as in /proc/PID/status `Cpus_allowed`.
    pub fn parse_mask(hex: &str, width: u32) -> Result<Self, CpuListError> {
        let mut set = Self::empty(width);
        let body = hex.trim();
        let groups: Vec<&str> = body.split(',').collect();
        let mut bit = 0u32;
        let mut pos_end = body.len();
        for g in groups.iter().rev() {
            let start = pos_end - g.len();
            let v = u32::from_str_radix(g, 16).map_err(|_| CpuListError {
                input: body.to_string(),
                position: start + 1,
                message: format!("{g:?} is not a 32-bit hex group"),
            })?;
            for b in 0..32 {
                if v & (1 << b) != 0 {
                    let cpu = bit + b;
                    if cpu >= set.width {
                        return Err(CpuListError {
                            input: body.to_string(),
                            position: start + 1,
                            message: format!(
                                "CPU {cpu} is beyond this machine's {} CPUs",
                                set.width
                            ),
                        });
                    }
                    set.insert(cpu);
                }
            }
            bit += 32;
            pos_end = start.saturating_sub(1);
        }
        Ok(set)
    }

    /// The kernel's hex mask format, which `parse_mask` reads and some
    /// files take as their only input (`/proc/irq/default_smp_affinity`,
    /// the workqueue cpumask): 32-bit groups, most significant first, the
    /// first one only as wide as the width needs, as the kernel prints it.
    pub fn to_mask(&self) -> String {
        let groups = self.width.div_ceil(32).max(1);
        let group = |g: u32| {
            let word = self.words.get((g / 2) as usize).copied().unwrap_or(0);
            (word >> ((g % 2) * 32)) as u32
        };
        let lead = (self.width.saturating_sub((groups - 1) * 32))
            .div_ceil(4)
            .clamp(1, 8);
        let mut out = format!("{:0w$x}", group(groups - 1), w = lead as usize);
        for g in (0..groups - 1).rev() {
            out.push_str(&format!(",{:08x}", group(g)));
        }
        out
    }

    pub fn from_words(width: u32, words: &[u64]) -> Self {
        let mut s = Self::empty(width);
        let n = s.words.len().min(words.len());
        s.words[..n].copy_from_slice(&words[..n]);
        s.trim();
        s
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn contains(&self, cpu: u32) -> bool {
        cpu < self.width && self.words[(cpu / 64) as usize] & (1 << (cpu % 64)) != 0
    }

    /// Ignores CPUs beyond the width: they cannot exist on this machine.
    pub fn insert(&mut self, cpu: u32) {
        if cpu < self.width {
            self.words[(cpu / 64) as usize] |= 1 << (cpu % 64);
        }
    }

    pub fn remove(&mut self, cpu: u32) {
        if cpu < self.width {
            self.words[(cpu / 64) as usize] &= !(1 << (cpu % 64));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    pub fn weight(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    pub fn first(&self) -> Option<u32> {
        self.iter().next()
    }

    pub fn last(&self) -> Option<u32> {
        self.words
            .iter()
            .enumerate()
            .rev()
            .find(|(_, w)| **w != 0)
            .map(|(i, w)| i as u32 * 64 + 63 - w.leading_zeros())
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros();
                w &= w - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }

    fn zip(&self, o: &Self, f: impl Fn(u64, u64) -> u64) -> Self {
        let width = self.width.max(o.width);
        let mut out = Self::empty(width);
        for (i, w) in out.words.iter_mut().enumerate() {
            *w = f(
                self.words.get(i).copied().unwrap_or(0),
                o.words.get(i).copied().unwrap_or(0),
            );
        }
        out
    }

    pub fn and(&self, o: &Self) -> Self {
        self.zip(o, |a, b| a & b)
    }

    pub fn or(&self, o: &Self) -> Self {
        self.zip(o, |a, b| a | b)
    }

    pub fn and_not(&self, o: &Self) -> Self {
        self.zip(o, |a, b| a & !b)
    }

    pub fn intersects(&self, o: &Self) -> bool {
        self.words.iter().zip(&o.words).any(|(a, b)| a & b != 0)
    }

    pub fn is_subset(&self, o: &Self) -> bool {
        self.words
            .iter()
            .enumerate()
            .all(|(i, a)| a & !o.words.get(i).copied().unwrap_or(0) == 0)
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
}

/// Canonical cpulist: ascending ranges, `0-3,8`; the empty set is "".
impl CpuSet {
    /// The first CPU at or after `from` that is in the set (or not, with
    /// `set` false), a word at a time: a full or empty word is one step.
    /// Bits beyond the words are clear.
    fn next_bit(&self, from: u32, set: bool) -> Option<u32> {
        let mut i = (from / 64) as usize;
        let mut word = self.words.get(i).copied()?;
        if !set {
            word = !word;
        }
        word &= u64::MAX << (from % 64);
        loop {
            if word != 0 {
                return Some(i as u32 * 64 + word.trailing_zeros());
            }
            i += 1;
            match self.words.get(i) {
                Some(&w) => word = if set { w } else { !w },
                // Past the last word every bit is clear.
                None => return if set { None } else { Some(i as u32 * 64) },
            }
        }
    }

    /// Maximal runs of consecutive CPUs, as (first, last).
    fn runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let mut from = 0;
        std::iter::from_fn(move || {
            let start = self.next_bit(from, true)?;
            let end = self.next_bit(start, false).unwrap_or(u32::MAX) - 1;
            from = end + 1;
            Some((start, end))
        })
    }
}

impl fmt::Display for CpuSet {
    // Linear in words and runs, not in CPUs: `plan` prints two sets per
    // kthread and a full 8192-CPU set is one run.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (start, end)) in self.runs().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({:?}/{})", self.to_string(), self.width)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> CpuSet {
        CpuSet::parse(s, 64).unwrap()
    }

    #[test]
    fn parses_kernel_syntax() {
        assert_eq!(p("").weight(), 0);
        assert_eq!(p("0-3,8\n").to_string(), "0-3,8");
        assert_eq!(p("0-15:2/4").to_string(), "0-1,4-5,8-9,12-13");
        assert_eq!(p("1,0,1").to_string(), "0-1");
        assert_eq!(CpuSet::parse("8191", MAX_CPUS).unwrap().to_string(), "8191");
    }

    #[test]
    fn errors_name_the_position() {
        let e = CpuSet::parse("3-1", 8).unwrap_err();
        assert_eq!(
            (e.position, e.message.as_str()),
            (3, "range 3-1 ends before it starts")
        );
        let e = CpuSet::parse("0-", 8).unwrap_err();
        assert_eq!(e.position, 3, "{e}");
        assert!(e.message.contains("end of the range"), "{e}");
        let e = CpuSet::parse("99999", 8).unwrap_err();
        assert!(e.message.contains("beyond"), "{e}");
        assert_eq!(e.position, 1);
        let e = CpuSet::parse("0,a", 8).unwrap_err();
        assert_eq!(
            (e.position, e.message.as_str()),
            (3, "expected a CPU number, found 'a'")
        );
        let e = CpuSet::parse("0-7:3/2", 8).unwrap_err();
        assert!(e.message.contains("group"), "{e}");
        assert!(
            CpuSet::parse("1-2x", 8)
                .unwrap_err()
                .message
                .contains("unexpected 'x'")
        );
    }

    #[test]
    fn hex_masks() {
        assert_eq!(CpuSet::parse_mask("3\n", 2).unwrap().to_string(), "0-1");
        assert_eq!(
            CpuSet::parse_mask("1,00000000", 64).unwrap().to_string(),
            "32"
        );
        assert_eq!(CpuSet::parse("0-1", 2).unwrap().to_mask(), "3");
        assert_eq!(CpuSet::parse("0", 40).unwrap().to_mask(), "00,00000001");
        assert_eq!(
            CpuSet::parse("4,32-35,63", 64).unwrap().to_mask(),
            "8000000f,00000010"
        );
        assert!(CpuSet::parse_mask("zz", 8).is_err());
        assert!(CpuSet::parse_mask("ff", 4).is_err());
    }

    #[test]
    fn set_operations() {
        let a = p("0-7");
        let b = p("4-11");
        assert_eq!(a.and(&b).to_string(), "4-7");
        assert_eq!(a.or(&b).to_string(), "0-11");
        assert_eq!(a.and_not(&b).to_string(), "0-3");
        assert!(a.intersects(&b) && p("4-5").is_subset(&a) && !b.is_subset(&a));
        assert_eq!(
            (CpuSet::full(70).weight(), CpuSet::full(70).last()),
            (70, Some(69))
        );
    }

    fn arb_set() -> impl Strategy<Value = CpuSet> {
        (1u32..=300).prop_flat_map(|width| {
            proptest::collection::vec(0..width, 0..40).prop_map(move |cpus| {
                let mut s = CpuSet::empty(width);
                cpus.into_iter().for_each(|c| s.insert(c));
                s
            })
        })
    }

    /// The obvious CPU-at-a-time formatting, to check the word-at-a-time one.
    fn reference(s: &CpuSet) -> String {
        let cpus: Vec<u32> = s.iter().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < cpus.len() {
            let mut j = i;
            while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
                j += 1;
            }
            out.push(if i == j {
                cpus[i].to_string()
            } else {
                format!("{}-{}", cpus[i], cpus[j])
            });
            i = j + 1;
        }
        out.join(",")
    }

    #[test]
    fn formats_runs_across_and_at_word_edges() {
        for list in [
            "",
            "0",
            "63",
            "64",
            "63-64",
            "0-63",
            "0-127",
            "0-191",
            "1-62,65",
            "5,64-191,255",
            "0-255",
        ] {
            assert_eq!(CpuSet::parse(list, 256).unwrap().to_string(), list);
        }
        assert_eq!(CpuSet::full(8192).to_string(), "0-8191");
        assert_eq!(CpuSet::full(70).to_string(), "0-69");
    }

    proptest! {
        #[test]
        fn display_matches_the_per_cpu_reference(ranges in proptest::collection::vec((0u32..300, 0u32..130), 0..6)) {
            let list = ranges
                .iter()
                .map(|&(a, n)| format!("{a}-{}", (a + n).min(299)))
                .collect::<Vec<_>>()
                .join(",");
            let s = CpuSet::parse(&list, 300).unwrap();
            prop_assert_eq!(s.to_string(), reference(&s));
        }

        #[test]
        fn format_then_parse_round_trips(s in arb_set()) {
            let text = s.to_string();
            prop_assert_eq!(CpuSet::parse(&text, s.width()).unwrap(), s);
        }

        #[test]
        fn hex_mask_round_trips(s in arb_set()) {
            prop_assert_eq!(CpuSet::parse_mask(&s.to_mask(), s.width()).unwrap(), s);
        }

        #[test]
        fn parse_then_format_is_canonical(cpus in proptest::collection::btree_set(0u32..128, 0..30)) {
            let list = cpus.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let s = CpuSet::parse(&list, 128).unwrap();
            prop_assert_eq!(s.iter().collect::<Vec<_>>(), cpus.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(CpuSet::parse(&s.to_string(), 128).unwrap(), s);
        }
    }
}
