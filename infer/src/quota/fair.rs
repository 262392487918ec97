//! Fair selection of a batch when capacity is short: higher tiers (lower numbers) first; within
//! a tier, tenants take turns, each keeping its own order. A flooding tenant fills only what
//! the quiet ones leave.

use std::collections::{BTreeMap, VecDeque};

/// The order to serve `items` (tenant, tier) in; take the first `capacity` of it.
pub fn fair_order<'a>(items: impl IntoIterator<Item = (&'a str, u8)>) -> Vec<usize> {
    // tier -> tenants in first-seen order -> their items' indices in arrival order
    let mut tiers: BTreeMap<u8, Vec<(&'a str, VecDeque<usize>)>> = BTreeMap::new();
    let mut count = 0;
    for (index, (tenant, tier)) in items.into_iter().enumerate() {
        let queues = tiers.entry(tier).or_default();
        match queues.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, queue)) => queue.push_back(index),
            None => queues.push((tenant, VecDeque::from([index]))),
        }
        count += 1;
    }
    let mut order = Vec::with_capacity(count);
    for queues in tiers.values_mut() {
        loop {
            let mut took = false;
            for (_, queue) in queues.iter_mut() {
                if let Some(index) = queue.pop_front() {
                    order.push(index);
                    took = true;
                }
            }
            if !took {
                break;
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_first_then_round_robin() {
        let items = [("flood", 2), ("flood", 2), ("flood", 2), ("quiet", 2), ("gold", 1), ("flood", 2), ("quiet", 2)];
        let order = fair_order(items.iter().map(|(t, tier)| (*t, *tier)));
        assert_eq!(order, vec![4, 0, 3, 1, 6, 2, 5]);
        // With room for three, gold and the quiet tenant are in.
        let first: Vec<&str> = order[..3].iter().map(|&i| items[i].0).collect();
        assert_eq!(first, vec!["gold", "flood", "quiet"]);
    }
}
