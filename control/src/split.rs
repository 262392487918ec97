//! The deterministic split: which version a request goes to under a rollout's shares.
//!
//! A request's bucket is the first 8 bytes of sha256(`<model>/<request_id>`), big-endian, mod
//! 10,000: the same request id always lands in the same bucket (a retry, a redelivery, a
//! replay), buckets are uniform whatever the ids look like, and a caller cannot aim at a
//! version without trying ids. The shares are taken in their order; the request goes to the
//! version whose cumulative share its bucket falls under.

use sha2::{Digest, Sha256};
use streamscore_contracts::Share;

/// Shares are in 1/10,000 of the traffic.
pub const BASIS_POINTS: i32 = 10_000;

/// Why a split cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("a split needs at least one version")]
    Empty,
    #[error("version {0:?} appears twice in the split")]
    Duplicate(String),
    #[error("version {version:?} has a share of {basis_points} basis points; shares are 0..=10000")]
    OutOfRange { version: String, basis_points: i32 },
    #[error("the shares add up to {0} basis points ({pct}%), not 10000 (100%)", pct = f64::from(*.0) / 100.0)]
    Total(i32),
}

/// Checks that `shares` name distinct versions and add up to 100%.
pub fn check(shares: &[Share]) -> Result<(), SplitError> {
    if shares.is_empty() {
        return Err(SplitError::Empty);
    }
    let mut total = 0_i32;
    for (i, share) in shares.iter().enumerate() {
        if shares[..i].iter().any(|s| s.version == share.version) {
            return Err(SplitError::Duplicate(share.version.clone()));
        }
        if !(0..=BASIS_POINTS).contains(&share.basis_points) {
            return Err(SplitError::OutOfRange { version: share.version.clone(), basis_points: share.basis_points });
        }
        total += share.basis_points;
    }
    if total != BASIS_POINTS {
        return Err(SplitError::Total(total));
    }
    Ok(())
}

/// The bucket of `request_id` for `model`, 0..10,000.
pub fn bucket(model: &str, request_id: &str) -> i32 {
    let mut hash = Sha256::new();
    hash.update(model.as_bytes());
    hash.update(b"/");
    hash.update(request_id.as_bytes());
    let digest = hash.finalize();
    let mut first = [0_u8; 8];
    first.copy_from_slice(&digest[..8]);
    // The remainder is below 10,000: it fits.
    i32::try_from(u64::from_be_bytes(first) % 10_000).unwrap_or(0)
}

/// The version `request_id` goes to under `shares` (checked with [`check`]).
pub fn choose<'a>(shares: &'a [Share], model: &str, request_id: &str) -> Option<&'a str> {
    let bucket = bucket(model, request_id);
    let mut cumulative = 0;
    for share in shares {
        cumulative += share.basis_points;
        if bucket < cumulative {
            return Some(&share.version);
        }
    }
    None
}

/// `v=pct,v=pct` (percents, up to two decimals) as shares.
pub fn parse(text: &str) -> Result<Vec<Share>, String> {
    let mut shares = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (version, percent) =
            part.split_once('=').ok_or_else(|| format!("{part:?}: expected version=percent, e.g. 1=80,2=20"))?;
        let percent: f64 = percent
            .trim()
            .trim_end_matches('%')
            .parse()
            .map_err(|_| format!("{part:?}: {percent:?} is not a number"))?;
        if !(0.0..=100.0).contains(&percent) {
            return Err(format!("{part:?}: a percent is 0..100"));
        }
        #[allow(clippy::cast_possible_truncation)] // 0..=10,000 after the check above
        let basis_points = (percent * 100.0).round() as i32;
        shares.push(Share { version: version.trim().to_owned(), basis_points });
    }
    check(&shares).map_err(|e| e.to_string())?;
    Ok(shares)
}

/// `1=80%,2=20%`.
pub fn describe(shares: &[Share]) -> String {
    shares.iter().map(|s| format!("{}={}%", s.version, f64::from(s.basis_points) / 100.0)).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(pairs: &[(&str, i32)]) -> Vec<Share> {
        pairs.iter().map(|(v, b)| Share { version: (*v).to_owned(), basis_points: *b }).collect()
    }

    #[test]
    fn a_split_lands_each_id_on_one_version_and_in_proportion() {
        let split = shares(&[("1", 8_000), ("2", 2_000)]);
        check(&split).expect("a valid split");
        let ids: Vec<String> = (0..20_000).map(|i| format!("{i:08x}-req")).collect();
        let to_2 = ids.iter().filter(|id| choose(&split, "fraud", id) == Some("2")).count();
        let share = to_2 as f64 / ids.len() as f64;
        assert!((share - 0.2).abs() < 0.01, "{share}");
        for id in ids.iter().take(100) {
            assert_eq!(choose(&split, "fraud", id), choose(&split, "fraud", id), "the same id, the same version");
        }
        // Another model buckets the same ids independently.
        let both = ids.iter().filter(|id| bucket("fraud", id) == bucket("churn", id)).count();
        assert!(both < 20, "{both}");
    }

    #[test]
    fn the_bucket_is_sha256_of_model_and_id() {
        // sha256("fraud/abc") = 5c2e0b5f..., first 8 bytes big-endian mod 10,000.
        let digest = Sha256::digest(b"fraud/abc");
        let expected = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 10_000;
        assert_eq!(i64::from(bucket("fraud", "abc")), i64::try_from(expected).expect("small"));
    }

    #[test]
    fn bad_splits_are_refused_naming_the_fault() {
        assert_eq!(check(&[]), Err(SplitError::Empty));
        assert_eq!(check(&shares(&[("1", 5_000), ("1", 5_000)])), Err(SplitError::Duplicate("1".to_owned())));
        assert_eq!(check(&shares(&[("1", 8_000), ("2", 1_000)])), Err(SplitError::Total(9_000)));
        assert!(matches!(check(&shares(&[("1", 20_000), ("2", -10_000)])), Err(SplitError::OutOfRange { .. })));
        assert_eq!(parse("1=80,2=20").expect("parses"), shares(&[("1", 8_000), ("2", 2_000)]));
        assert_eq!(parse("1=66.67,2=33.33").expect("parses"), shares(&[("1", 6_667), ("2", 3_333)]));
        assert!(parse("1=80,2=30").expect_err("110%").contains("not 10000"));
        assert!(parse("1:80").expect_err("no =").contains("version=percent"));
        assert_eq!(describe(&shares(&[("1", 7_550), ("2", 2_450)])), "1=75.5%,2=24.5%");
    }
}
