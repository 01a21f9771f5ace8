//! Suggestions for misspelt keywords in a rules file.

/// `; did you mean "auto"?` when `word` is a close misspelling (at most two
/// edits, a swap counting as one) of exactly one keyword, else "".
pub(super) fn did_you_mean(word: &str, keywords: &[&str]) -> String {
    let w = word.trim().to_ascii_lowercase();
    let close: Vec<_> = keywords
        .iter()
        .filter(|k| w.len() > 1 && edit_distance(&w, k) <= 2.min(k.len() / 2))
        .collect();
    match close.as_slice() {
        [k] => format!("; did you mean {k:?}?"),
        _ => String::new(),
    }
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions
/// and swaps of neighbours each cost one.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}
