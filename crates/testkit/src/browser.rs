//! A real browser for the tests of web pages (the console, a system's dashboard): headless
//! Chromium from Debian's package renders a page, scripts and requests included, and the test
//! reads the DOM it ended with; a screenshot is kept as the test's artifact.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<name>/`, made if need be: where a test's screenshots are kept.
pub fn artifacts(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target")
        .join(name);
    std::fs::create_dir_all(&dir).expect("artifacts directory");
    dir
}

/// The page at `url` as headless Chromium rendered it (its DOM once scripts and requests
/// settled, within 8 s of the page's virtual time), with a screenshot saved at `shot`.
pub fn browse(url: &str, shot: &Path) -> String {
    let profile = std::env::temp_dir().join(format!("tessera-chromium-{}", crate::free_port()));
    let common = |cmd: &mut Command| {
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--window-size=1400,1000",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    };
    let mut dump = Command::new("chromium");
    common(&mut dump);
    let out = dump
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut screenshot = Command::new("chromium");
    common(&mut screenshot);
    let shot_out = screenshot
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        shot_out.status.success() && shot.exists(),
        "{}",
        String::from_utf8_lossy(&shot_out.stderr)
    );
    let _ = std::fs::remove_dir_all(&profile);
    String::from_utf8(out.stdout).expect("the DOM is text")
}
