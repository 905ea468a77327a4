//! Join the shards of one matrix (`sim matrix --shard i/n`, one per machine or job) into the
//! whole matrix.
//!
//! Parts must be shards of the same matrix (same name, definition fingerprint, total cell
//! count, schema version and shard count), each shard given once, each cell index once. The
//! result holds the cells sorted by index, the summary recomputed, trickle savings recomputed
//! across parts (the trickle and vanilla halves of a pair may sit in different shards), the
//! sum of the parts' wall times and the largest job count.
//!
//! By default the union must be complete. [`merge_with`] with
//! [`MergeOptions::allow_incomplete`] joins what there is (e.g. to report on the shards that
//! finished): the result then has `shard: None` and fewer cells than `total_cells`, which is
//! how readers tell a partial merge.

use std::collections::{BTreeSet, HashMap};

use super::model::{Matrix, Summary, fill_trickle_savings};

/// How many missing cell indices an error lists before it stops.
const LIST_MAX: usize = 12;

/// Why parts could not be merged. Parts are named by the labels given to
/// [`merge_labelled`] (file names), or `part 1`, `part 2`, ... by [`merge`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Nothing to merge.
    #[error("no parts to merge")]
    Empty,
    /// A part holds the whole matrix, not a shard.
    #[error("{part} holds the whole matrix {matrix:?} (no shard): only shards are merged")]
    NotAShard {
        /// The part.
        part: String,
        /// Its matrix name.
        matrix: String,
    },
    /// Two parts differ in something that must be equal.
    #[error("{part} does not belong with {first}: {what} is {theirs} there but {ours} in {first}")]
    Mismatch {
        /// The first part (the reference).
        first: String,
        /// The part that differs.
        part: String,
        /// Which field (`matrix`, `definition`, `total_cells`, `shard count`, ...).
        what: &'static str,
        /// Its value in the first part.
        ours: String,
        /// Its value in `part`.
        theirs: String,
    },
    /// A shard number outside 1..=count.
    #[error("{part} claims shard {index}/{count}, which does not exist")]
    BadShard {
        /// The part.
        part: String,
        /// Its shard index.
        index: usize,
        /// Its shard count.
        count: usize,
    },
    /// The same shard given twice.
    #[error("shard {index}/{count} given twice: {first} and {second}")]
    DuplicateShard {
        /// Shard index.
        index: usize,
        /// Shard count.
        count: usize,
        /// One part.
        first: String,
        /// The other.
        second: String,
    },
    /// The same cell in two parts (or twice in one).
    #[error("cell {index} ({id}) appears in both {first} and {second}")]
    DuplicateCell {
        /// Cell index.
        index: usize,
        /// Cell id.
        id: String,
        /// Where it was first seen.
        first: String,
        /// Where it was seen again.
        second: String,
    },
    /// A cell index past the matrix's size.
    #[error("{part} has cell {index} ({id}), but the matrix has only {total} cells")]
    CellOutOfRange {
        /// The part.
        part: String,
        /// Cell index.
        index: usize,
        /// Cell id.
        id: String,
        /// `total_cells`.
        total: usize,
    },
    /// The union lacks cells.
    #[error(
        "incomplete: {missing} of {total} cells missing (indices {}{}){}; \
         merge the missing shards too, or ask for a partial merge",
        list(.indices),
        if *.missing > .indices.len() { ", ..." } else { "" },
        if .shards.is_empty() { String::new() } else { format!(", shards {} not given", list(.shards)) }
    )]
    Incomplete {
        /// How many cells are missing.
        missing: usize,
        /// `total_cells`.
        total: usize,
        /// The first missing indices (at most 12).
        indices: Vec<usize>,
        /// Shard indices no part claims.
        shards: Vec<usize>,
    },
}

fn list(v: &[usize]) -> String {
    v.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Options for [`merge_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOptions {
    /// Join what there is even when cells are missing (the result has fewer cells than
    /// `total_cells`). Everything else is still checked.
    pub allow_incomplete: bool,
}

/// Merge shards into the complete matrix. Parts are named `part 1`, `part 2`, ... in errors;
/// use [`merge_labelled`] to name them by file.
pub fn merge(parts: Vec<Matrix>) -> Result<Matrix, MergeError> {
    merge_with(label(parts), MergeOptions::default())
}

/// Merge shards into the complete matrix, naming each part (e.g. by its file) in errors.
pub fn merge_labelled(parts: Vec<(String, Matrix)>) -> Result<Matrix, MergeError> {
    merge_with(parts, MergeOptions::default())
}

/// Merge what there is: like [`merge`], but missing cells are allowed.
pub fn merge_partial(parts: Vec<Matrix>) -> Result<Matrix, MergeError> {
    merge_with(
        label(parts),
        MergeOptions {
            allow_incomplete: true,
        },
    )
}

fn label(parts: Vec<Matrix>) -> Vec<(String, Matrix)> {
    parts
        .into_iter()
        .enumerate()
        .map(|(i, m)| (format!("part {}", i + 1), m))
        .collect()
}

/// Merge labelled parts with options.
pub fn merge_with(parts: Vec<(String, Matrix)>, opts: MergeOptions) -> Result<Matrix, MergeError> {
    let mut parts = parts.into_iter();
    let Some((first_label, first)) = parts.next() else {
        return Err(MergeError::Empty);
    };
    let rest: Vec<(String, Matrix)> = parts.collect();
    let Some(count) = first.shard.map(|s| s.count) else {
        return Err(MergeError::NotAShard {
            part: first_label,
            matrix: first.matrix,
        });
    };

    // Every part: a shard of the same matrix, with the same count, each shard once.
    let mut claimed: HashMap<usize, &str> = HashMap::new();
    for (label, m) in
        std::iter::once((&first_label, &first)).chain(rest.iter().map(|(l, m)| (l, m)))
    {
        let mismatch = |what, ours: String, theirs: String| MergeError::Mismatch {
            first: first_label.clone(),
            part: label.clone(),
            what,
            ours,
            theirs,
        };
        if m.schema_version != first.schema_version {
            return Err(mismatch(
                "schema_version",
                first.schema_version.to_string(),
                m.schema_version.to_string(),
            ));
        }
        if m.matrix != first.matrix {
            return Err(mismatch(
                "matrix",
                format!("{:?}", first.matrix),
                format!("{:?}", m.matrix),
            ));
        }
        if m.definition != first.definition {
            return Err(mismatch(
                "definition",
                format!("{:?}", first.definition),
                format!("{:?}", m.definition),
            ));
        }
        if m.total_cells != first.total_cells {
            return Err(mismatch(
                "total_cells",
                first.total_cells.to_string(),
                m.total_cells.to_string(),
            ));
        }
        let Some(shard) = m.shard else {
            return Err(MergeError::NotAShard {
                part: label.clone(),
                matrix: m.matrix.clone(),
            });
        };
        if shard.count != count {
            return Err(mismatch(
                "shard count",
                count.to_string(),
                shard.count.to_string(),
            ));
        }
        if shard.index == 0 || shard.index > shard.count {
            return Err(MergeError::BadShard {
                part: label.clone(),
                index: shard.index,
                count: shard.count,
            });
        }
        if let Some(other) = claimed.insert(shard.index, label) {
            return Err(MergeError::DuplicateShard {
                index: shard.index,
                count,
                first: other.to_owned(),
                second: label.clone(),
            });
        }
    }

    // Every cell once, within range.
    let total = first.total_cells;
    let mut seen: HashMap<usize, (&str, &str)> = HashMap::new();
    for (label, m) in
        std::iter::once((&first_label, &first)).chain(rest.iter().map(|(l, m)| (l, m)))
    {
        for c in &m.cells {
            if c.index >= total {
                return Err(MergeError::CellOutOfRange {
                    part: label.clone(),
                    index: c.index,
                    id: c.id.clone(),
                    total,
                });
            }
            if let Some((other, _)) = seen.insert(c.index, (label, &c.id)) {
                return Err(MergeError::DuplicateCell {
                    index: c.index,
                    id: c.id.clone(),
                    first: other.to_owned(),
                    second: label.clone(),
                });
            }
        }
    }
    if seen.len() < total && !opts.allow_incomplete {
        let missing: BTreeSet<usize> = (0..total).filter(|i| !seen.contains_key(i)).collect();
        return Err(MergeError::Incomplete {
            missing: missing.len(),
            total,
            indices: missing.iter().copied().take(LIST_MAX).collect(),
            shards: (1..=count).filter(|i| !claimed.contains_key(i)).collect(),
        });
    }

    let elapsed_ms = first.elapsed_ms + rest.iter().map(|(_, m)| m.elapsed_ms).sum::<u64>();
    let jobs = rest
        .iter()
        .map(|(_, m)| m.jobs)
        .fold(first.jobs, usize::max);
    let mut out = first;
    for (_, m) in rest {
        out.cells.extend(m.cells);
    }
    out.cells.sort_by_key(|c| c.index);
    fill_trickle_savings(&mut out.cells);
    out.summary = Summary::of(&out.cells);
    out.shard = None;
    out.elapsed_ms = elapsed_ms;
    out.jobs = jobs;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::matrix::model::{Cell, Shard};
    use crate::matrix::report::tests::sample;

    /// Split `m` into `n` shards, cell `i` going to shard `pick(i) + 1`, each shard with its
    /// own summary, savings (within the shard only), wall time and job count.
    fn split(m: &Matrix, n: usize, pick: impl Fn(usize) -> usize) -> Vec<Matrix> {
        (0..n)
            .map(|k| {
                let mut cells: Vec<Cell> = m
                    .cells
                    .iter()
                    .filter(|c| pick(c.index) == k)
                    .cloned()
                    .collect();
                fill_trickle_savings(&mut cells);
                Matrix {
                    shard: Some(Shard {
                        index: k + 1,
                        count: n,
                    }),
                    summary: Summary::of(&cells),
                    cells,
                    elapsed_ms: 1000 * (k as u64 + 1),
                    jobs: k + 1,
                    ..m.clone()
                }
            })
            .collect()
    }

    #[test]
    fn two_and_three_shards_give_back_the_whole() {
        let whole = sample();
        let total = whole.total_cells;
        for (n, pick) in [
            (2, Box::new(|i: usize| i % 2) as Box<dyn Fn(usize) -> usize>),
            (3, Box::new(|i: usize| i % 3)),
            (3, Box::new(move |i: usize| i * 3 / total)),
        ] {
            let mut parts = split(&whole, n, pick);
            // Savings pair trickle cell i with vanilla cell i + 8: the round-robin split by 2
            // keeps pairs together, the others separate them; merge must restore all.
            parts.reverse();
            let merged = merge(parts).unwrap();
            assert_eq!(merged.cells, whole.cells, "{n} shards");
            assert_eq!(merged.summary, whole.summary);
            assert_eq!(merged.shard, None);
            assert_eq!(
                merged.elapsed_ms,
                (1..=n as u64).map(|k| 1000 * k).sum::<u64>()
            );
            assert_eq!(merged.jobs, n);
            assert_eq!(
                Matrix {
                    elapsed_ms: whole.elapsed_ms,
                    jobs: whole.jobs,
                    ..merged
                },
                whole
            );
        }
    }

    #[test]
    fn split_by_three_really_separates_trickle_pairs() {
        // Guard for the test above: a shard alone lacks savings the whole has.
        let whole = sample();
        let parts = split(&whole, 3, |i| i % 3);
        let alone: usize = parts
            .iter()
            .flat_map(|p| &p.cells)
            .filter(|c| c.trickle_saving_ms.is_some())
            .count();
        let all = whole
            .cells
            .iter()
            .filter(|c| c.trickle_saving_ms.is_some())
            .count();
        assert!(alone < all, "{alone} vs {all}");
    }

    #[test]
    fn duplicate_cells_and_shards_are_refused() {
        let whole = sample();
        let mut parts = split(&whole, 2, |i| i % 2);
        let dup = parts[0].cells[0].clone();
        parts[1].cells.push(dup);
        let e = merge_labelled(vec![
            ("a.json".into(), parts[0].clone()),
            ("b.json".into(), parts[1].clone()),
        ])
        .unwrap_err();
        assert_eq!(
            e,
            MergeError::DuplicateCell {
                index: 0,
                id: "eim|eif|trickle|none|icepeer/icepeer".into(),
                first: "a.json".into(),
                second: "b.json".into()
            }
        );
        assert!(e.to_string().contains("appears in both a.json and b.json"));

        let parts = split(&whole, 2, |i| i % 2);
        let e = merge(vec![parts[0].clone(), parts[0].clone()]).unwrap_err();
        assert!(
            matches!(
                e,
                MergeError::DuplicateShard {
                    index: 1,
                    count: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("shard 1/2 given twice: part 1 and part 2")
        );
    }

    #[test]
    fn mismatched_parts_are_refused() {
        let whole = sample();
        let parts = split(&whole, 2, |i| i % 2);

        let mut other = parts[1].clone();
        other.definition = "def-ffff".into();
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "part 2 does not belong with part 1: definition is \"def-ffff\" there but \
             \"def-0123\" in part 1"
        );

        let mut other = parts[1].clone();
        other.matrix = "another".into();
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert!(
            matches!(e, MergeError::Mismatch { what: "matrix", .. }),
            "{e}"
        );

        let mut other = parts[1].clone();
        other.total_cells += 1;
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert!(
            matches!(
                e,
                MergeError::Mismatch {
                    what: "total_cells",
                    ..
                }
            ),
            "{e}"
        );

        let mut other = parts[1].clone();
        other.shard = Some(Shard { index: 2, count: 3 });
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert!(
            matches!(
                e,
                MergeError::Mismatch {
                    what: "shard count",
                    ..
                }
            ),
            "{e}"
        );

        let mut other = parts[1].clone();
        other.shard = Some(Shard { index: 3, count: 2 });
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert!(matches!(e, MergeError::BadShard { index: 3, .. }), "{e}");

        let e = merge(vec![parts[0].clone(), whole.clone()]).unwrap_err();
        assert!(matches!(e, MergeError::NotAShard { .. }), "{e}");
        let e = merge(vec![whole.clone()]).unwrap_err();
        assert!(matches!(e, MergeError::NotAShard { .. }), "{e}");
        assert_eq!(merge(vec![]).unwrap_err(), MergeError::Empty);

        let mut other = parts[1].clone();
        other.cells[0].index = 99;
        let e = merge(vec![parts[0].clone(), other]).unwrap_err();
        assert!(
            matches!(e, MergeError::CellOutOfRange { index: 99, .. }),
            "{e}"
        );
    }

    #[test]
    fn missing_cells_are_refused_unless_partial() {
        let whole = sample();
        let parts = split(&whole, 3, |i| i % 3);
        let e = merge(vec![parts[0].clone(), parts[2].clone()]).unwrap_err();
        assert_eq!(
            e,
            MergeError::Incomplete {
                missing: 5,
                total: 16,
                indices: vec![1, 4, 7, 10, 13],
                shards: vec![2],
            }
        );
        assert_eq!(
            e.to_string(),
            "incomplete: 5 of 16 cells missing (indices 1, 4, 7, 10, 13), shards 2 not \
             given; merge the missing shards too, or ask for a partial merge"
        );

        // A shard that lost a cell: no shard missing, one cell missing.
        let mut short = parts[1].clone();
        short.cells.pop();
        let e = merge(vec![parts[0].clone(), short, parts[2].clone()]).unwrap_err();
        assert!(
            matches!(e, MergeError::Incomplete { missing: 1, ref shards, .. } if shards.is_empty()),
            "{e}"
        );

        let partial = merge_partial(vec![parts[0].clone(), parts[2].clone()]).unwrap();
        assert_eq!(partial.cells.len(), 11);
        assert_eq!(partial.total_cells, 16);
        assert_eq!(partial.shard, None);
        assert_eq!(partial.summary, Summary::of(&partial.cells));
        assert!(partial.cells.windows(2).all(|w| w[0].index < w[1].index));
    }

    #[test]
    fn incomplete_lists_at_most_twelve_indices() {
        let mut whole = sample();
        whole.total_cells = 100;
        let parts = split(&whole, 2, |i| i % 2);
        let e = merge(vec![parts[0].clone(), parts[1].clone()]).unwrap_err();
        let MergeError::Incomplete {
            missing, indices, ..
        } = &e
        else {
            panic!("{e}");
        };
        assert_eq!((*missing, indices.len()), (84, 12));
        assert!(e.to_string().contains("27, ...)"), "{e}");
    }
}
