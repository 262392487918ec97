//! Binned counts in event-time windows; mergeable, so partitions can be counted apart and
//! combined, and a sliding view is the merge of the last N tumbling windows.

/// Counts of one variable on its bins (k inner edges → k + 1 bins), plus what could not be
/// binned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub missing: u64,
    pub non_finite: u64,
}

impl Histogram {
    pub fn new(edges: usize) -> Self {
        Self { counts: vec![0; edges + 1], missing: 0, non_finite: 0 }
    }

    /// Counts one value: bin `i` holds `edges[i-1] <= v < edges[i]`.
    pub fn add(&mut self, edges: &[f64], value: Option<f64>) {
        match value {
            None => self.missing += 1,
            Some(v) if !v.is_finite() => self.non_finite += 1,
            Some(v) => {
                let bin = edges.partition_point(|e| *e <= v);
                self.counts[bin] += 1;
            }
        }
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.missing += other.missing;
        self.non_finite += other.non_finite;
    }

    pub fn binned(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn total(&self) -> u64 {
        self.binned() + self.missing + self.non_finite
    }
}

/// One tumbling window (or a merge of several).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_us: i64,
    pub end_us: i64,
    /// Per feature, in the model's order.
    pub features: Vec<Histogram>,
    pub score: Histogram,
    pub events: u64,
}

impl Window {
    pub fn new(start_us: i64, end_us: i64, feature_edges: &[Vec<f64>], score_edges: &[f64]) -> Self {
        Self {
            start_us,
            end_us,
            features: feature_edges.iter().map(|e| Histogram::new(e.len())).collect(),
            score: Histogram::new(score_edges.len()),
            events: 0,
        }
    }

    /// Adds another window's counts (same bins) and widens the time span.
    pub fn merge(&mut self, other: &Window) {
        self.start_us = self.start_us.min(other.start_us);
        self.end_us = self.end_us.max(other.end_us);
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            a.merge(b);
        }
        self.score.merge(&other.score);
        self.events += other.events;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binning_and_merging() {
        let edges = [0.0, 10.0];
        let mut h = Histogram::new(edges.len());
        for v in [-1.0, 0.0, 5.0, 10.0, 11.0] {
            h.add(&edges, Some(v));
        }
        h.add(&edges, None);
        h.add(&edges, Some(f64::NAN));
        assert_eq!(h.counts, vec![1, 2, 2]);
        assert_eq!((h.missing, h.non_finite, h.total()), (1, 1, 7));
        let mut a = Window::new(0, 10, &[edges.to_vec()], &edges);
        let mut b = a.clone();
        a.features[0] = h.clone();
        b.features[0] = h;
        b.start_us = 10;
        b.end_us = 20;
        a.merge(&b);
        assert_eq!(a.features[0].counts, vec![2, 4, 4]);
        assert_eq!((a.start_us, a.end_us), (0, 20));
    }
}
