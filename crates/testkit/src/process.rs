//! The processes of a system under test, seen and steered from outside: signals, freezing,
//! liveness and the process tree, read from `/proc` as an operator would.

use std::time::{Duration, Instant};

use tessera::registry::Catalog;

/// Sends `sig` to `pid`.
#[allow(unsafe_code)]
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Stops a process (SIGSTOP) and waits until the kernel shows it stopped: `kill` returns
/// before every thread has stopped, and a test that goes on at once may still be answered by
/// it.
pub fn freeze(pid: u32) {
    signal(pid, libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = state_of(pid);
        if state == Some('T') {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} did not stop (state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Lets a process [`freeze`] stopped go on (SIGCONT).
pub fn thaw(pid: u32) {
    signal(pid, libc::SIGCONT);
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    state_of(pid).is_some_and(|state| state != 'Z')
}

/// A process's resident memory (`VmRSS` in `/proc/<pid>/status`), in KiB; `None` if it is gone.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The command line of a process, its arguments in order; empty if it is gone.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A process's state letter from `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`…); `None` if it is gone.
fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// All descendants of `root`, from /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0);
            parents.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

/// The admin address (`/metrics`, `/status/*`) an instance registered with.
pub fn admin_of(catalog: &Catalog, instance: &str) -> Option<String> {
    catalog
        .services
        .values()
        .flatten()
        .find(|i| i.id == instance)
        .and_then(|i| i.metadata.get(tessera::admin::METADATA_KEY))
        .cloned()
}

/// The pid an instance registered with.
pub fn pid_of(catalog: &Catalog, instance: &str) -> Option<u32> {
    catalog
        .services
        .values()
        .flatten()
        .find(|i| i.id == instance)
        .and_then(|i| i.metadata.get("pid"))
        .and_then(|p| p.parse().ok())
}
