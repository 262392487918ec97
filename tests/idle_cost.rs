//! What an idle client costs: nothing. rdkafka's producers poll for delivery reports on a
//! thread of their own, in 100 ms rounds; rdkafka 0.39.0 truncated the time left in a round
//! to whole milliseconds, so the last millisecond of every round was a busy loop of
//! non-blocking polls, about 1% of a core per producer with nothing to send. A pipeline has
//! four producers (outputs, predictions, audit, quota checkpoints), and that was 3.4% of a
//! core, idle. `vendor/rdkafka` rounds up instead (see vendor/rdkafka/PATCHES.md).
//!
//! The test gives eight producers, connected to the real broker, a measuring window with no
//! work, and reads their polling threads' CPU time from /proc (clock ticks, 10 ms each).
//! Unpatched, eight producers spent 11–12 ticks in 3 s here; sleeping ones spend 0.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};

/// CPU ticks (user + system) of this process's threads named `name`, by thread id.
fn thread_ticks(name: &str) -> HashMap<String, u64> {
    let mut ticks = HashMap::new();
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task is readable") {
        let task = task.expect("a task entry").path();
        let Ok(comm) = std::fs::read_to_string(task.join("comm")) else { continue };
        if comm.trim() != name {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(task.join("stat")) else { continue };
        // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat.rsplit_once(')').expect("stat has a command").1.split_whitespace().collect();
        let (utime, stime): (u64, u64) = (fields[11].parse().expect("utime"), fields[12].parse().expect("stime"));
        ticks.insert(task.file_name().expect("a task id").to_string_lossy().into_owned(), utime + stime);
    }
    ticks
}

#[test]
fn idle_producers_sleep_between_polls() {
    let kafka = support::kafka();
    let producers: Vec<FutureProducer> = (0..8).map(|_| kafka.producer().expect("a producer")).collect();
    // Connected: metadata from the real broker, so the polling threads run as in a stage.
    for producer in &producers {
        producer.client().fetch_metadata(None, Duration::from_secs(10)).expect("metadata from the broker");
    }
    // Thread names are cut to 15 bytes by the kernel.
    let before = thread_ticks("producer pollin");
    assert_eq!(before.len(), producers.len(), "one polling thread per producer");
    let window = Duration::from_secs(3);
    std::thread::sleep(window);
    let after = thread_ticks("producer pollin");
    let spent: u64 = after.iter().map(|(tid, t)| t - before.get(tid).copied().unwrap_or(0)).sum();
    eprintln!("{} idle producers' polling threads: {spent} clock ticks in {window:?}", producers.len());
    // Two ticks of slack for the odd wake-up (a metadata refresh, a log event).
    assert!(
        spent <= 2,
        "{} idle producers' polling threads spent {spent} clock ticks in {window:?}: they spin instead of sleeping \
         (is the vendor/rdkafka patch in [patch.crates-io]?)",
        producers.len()
    );
}
