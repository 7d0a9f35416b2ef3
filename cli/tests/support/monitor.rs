//! Reading `monitor` from a test: the first event it prints while the test makes traffic (for
//! the test files that watch drops: included with `#[path]`, like `applied.rs`).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_lab::Lab;

/// Starts `monitor` (a `portcullis monitor ... --count 1` command) in `netns`, runs `act` once it
/// listens, and returns the JSON event it printed; fails when none came within 15 s.
pub fn first_event(
    lab: &mut Lab,
    netns: &str,
    mut monitor: Command,
    act: impl FnOnce(&Lab),
) -> serde_json::Value {
    monitor.stdout(Stdio::piped());
    let monitor = lab.spawn_in(netns, monitor).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    act(lab);
    let deadline = Instant::now() + Duration::from_secs(15);
    while monitor.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "monitor printed no event");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut out = String::new();
    monitor.with(|c| c.stdout.take().unwrap().read_to_string(&mut out).unwrap());
    serde_json::from_str(out.lines().next().expect("one event")).unwrap()
}
