//! The local broker's storage: tansu 0.6 looks up every fetched record's headers in a table
//! without an index on the record's key, a scan of every header it holds per record; the
//! project's own start of tansu adds the index (`streamscore::stack::index_tansu_storage`).
//! Checked on the query plan of tansu's own header lookup, against a real broker; what it saves
//! was measured (README "A tansu limitation to know"), not timed here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// tansu 0.6.0's `header_fetch.sql`, with its parameters.
const HEADER_FETCH: &str = "select h.k, h.v from header h \
    join record r on h.topition = r.topition and h.offset_id = r.offset_id \
    join topition tp on tp.id = r.topition join topic t on tp.topic = t.id join cluster c on t.cluster = c.id \
    where c.name = ?1 and t.name = ?2 and tp.partition = ?3 and r.offset_id = ?4";

#[test]
fn the_brokers_header_lookup_uses_an_index_not_a_scan_of_every_header() {
    let broker = support::PrivateBroker::start();
    let db = rusqlite::Connection::open(broker.data_dir().join("tansu.db")).unwrap();
    let mut plan = db.prepare(&format!("explain query plan {HEADER_FETCH}")).unwrap();
    let steps: Vec<String> = plan
        .query_map(rusqlite::params!["tansu", "t", 0, 0], |row| row.get::<_, String>(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let header_steps: Vec<&String> = steps.iter().filter(|s| s.contains(" h ") || s.ends_with(" h")).collect();
    assert!(!header_steps.is_empty(), "the plan reads the header table: {steps:?}");
    assert!(
        header_steps.iter().all(|s| s.contains("USING INDEX streamscore_header_record")),
        "every read of the header table goes through the index: {steps:?}"
    );
}
