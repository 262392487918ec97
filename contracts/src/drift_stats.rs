//! Drift statistics between a reference distribution (shares per bin) and current counts on
//! the same bins. Every function takes `reference` shares and `current` counts of equal length.
//!
//! Zero shares are smoothed with [`EPSILON`] (then renormalized) wherever a logarithm needs
//! it, as is usual for PSI; the two distributions are otherwise used as they are.

/// Added to every share before logarithms.
pub const EPSILON: f64 = 1e-4;

fn shares(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    #[allow(clippy::cast_precision_loss)]
    counts.iter().map(|&c| if total == 0 { 0.0 } else { c as f64 / total as f64 }).collect()
}

fn smoothed(p: &[f64]) -> Vec<f64> {
    let total: f64 = p.iter().map(|x| x + EPSILON).sum();
    p.iter().map(|x| (x + EPSILON) / total).collect()
}

/// Population stability index: Σ (c − r) · ln(c / r), on smoothed shares.
pub fn psi(reference: &[f64], current: &[u64]) -> f64 {
    let (r, c) = (smoothed(reference), smoothed(&shares(current)));
    r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum()
}

/// Jensen-Shannon distance (the square root of the divergence, base-2 logs): 0 to 1.
pub fn jensen_shannon(reference: &[f64], current: &[u64]) -> f64 {
    let (r, c) = (smoothed(reference), smoothed(&shares(current)));
    let kl = |p: &[f64], q: &[f64]| -> f64 { p.iter().zip(q).map(|(p, q)| p * (p / q).log2()).sum() };
    let m: Vec<f64> = r.iter().zip(&c).map(|(r, c)| (r + c) / 2.0).collect();
    (0.5 * kl(&r, &m) + 0.5 * kl(&c, &m)).max(0.0).sqrt()
}

fn cdf(p: &[f64]) -> Vec<f64> {
    p.iter()
        .scan(0.0, |acc, x| {
            *acc += x;
            Some(*acc)
        })
        .collect()
}

/// Binned Kolmogorov-Smirnov statistic: the largest gap between the two CDFs at bin edges.
pub fn kolmogorov_smirnov(reference: &[f64], current: &[u64]) -> f64 {
    let (r, c) = (cdf(reference), cdf(&shares(current)));
    r.iter().zip(&c).map(|(r, c)| (r - c).abs()).fold(0.0, f64::max)
}

/// Wasserstein-1 distance on bin indices, normalized by the largest possible (bins − 1), so
/// 0 is identical and 1 is all mass moved from the first bin to the last.
pub fn wasserstein(reference: &[f64], current: &[u64]) -> f64 {
    if reference.len() < 2 {
        return 0.0;
    }
    let (r, c) = (cdf(reference), cdf(&shares(current)));
    let moved: f64 = r.iter().zip(&c).take(reference.len() - 1).map(|(r, c)| (r - c).abs()).sum();
    #[allow(clippy::cast_precision_loss)]
    let max = (reference.len() - 1) as f64;
    moved / max
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values computed by hand (and with numpy/scipy) for these fixed counts:
    /// reference shares [0.25, 0.25, 0.25, 0.25], current counts [40, 30, 20, 10].
    #[test]
    fn statistics_match_a_direct_computation() {
        let reference = [0.25, 0.25, 0.25, 0.25];
        let current = [40, 30, 20, 10];
        // Direct, with the same smoothing: shares (c + ε) / (1 + 4ε).
        let norm = 1.0 + 4.0 * EPSILON;
        let c: Vec<f64> = [0.4, 0.3, 0.2, 0.1].iter().map(|x| (x + EPSILON) / norm).collect();
        let r: Vec<f64> = reference.iter().map(|x| (x + EPSILON) / norm).collect();
        let psi_direct: f64 = (0..4).map(|i| (c[i] - r[i]) * (c[i] / r[i]).ln()).sum();
        assert!((psi(&reference, &current) - psi_direct).abs() < 1e-12);
        // Unsmoothed value from scipy-free arithmetic: 0.15·ln1.6 + 0.05·ln1.2 − 0.05·ln0.8 − 0.15·ln0.4.
        let psi_exact = 0.15 * 1.6_f64.ln() + 0.05 * 1.2_f64.ln() - 0.05 * 0.8_f64.ln() - 0.15 * 0.4_f64.ln();
        assert!((psi(&reference, &current) - psi_exact).abs() < 1e-3, "{} vs {psi_exact}", psi(&reference, &current));
        // KS: CDFs [0.25,0.5,0.75,1] vs [0.4,0.7,0.9,1] → 0.2 at the second edge.
        assert!((kolmogorov_smirnov(&reference, &current) - 0.2).abs() < 1e-12);
        // W1 on indices: |0.15|+|0.2|+|0.15| = 0.5, over 3 → 1/6.
        assert!((wasserstein(&reference, &current) - 0.5 / 3.0).abs() < 1e-12);
        // JS distance (base 2) computed directly in Python without smoothing:
        // m = (r + c) / 2; sqrt(0.5·KL(r‖m) + 0.5·KL(c‖m)) = 0.200503…
        assert!(
            (jensen_shannon(&reference, &current) - 0.200_503).abs() < 2e-4,
            "{}",
            jensen_shannon(&reference, &current)
        );
    }

    #[test]
    fn identical_distributions_are_not_drift() {
        let reference = [0.1, 0.2, 0.3, 0.4];
        let current = [100, 200, 300, 400];
        assert!(psi(&reference, &current).abs() < 1e-12);
        assert!(jensen_shannon(&reference, &current) < 1e-6);
        assert!(kolmogorov_smirnov(&reference, &current) < 1e-12);
        assert!(wasserstein(&reference, &current) < 1e-12);
        assert!((wasserstein(&[1.0, 0.0, 0.0], &[0, 0, 7]) - 1.0).abs() < 1e-12, "all mass moved end to end");
    }
}
