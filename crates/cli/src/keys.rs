//! The system's secrets under its state directory, made on first start and read after:
//! the passport keys (every process, `docs/passport.md`) and the control keys (the control
//! plane and this runner only, `docs/security.md`). Both files are mode 0600 in a 0700
//! directory: other users of the host cannot read them.

use std::path::Path;

use anyhow::Context as _;
use tessera::PassportKeys;
use tessera::identity::{ControlKeys, Credential, KEYS_ENV, Principal};

/// The system's passport key set.
pub fn passport_keys(state_dir: &Path) -> anyhow::Result<String> {
    read_or_make(
        &state_dir.join("passport.keys"),
        PassportKeys::generate_spec,
    )
}

/// The control keys: from `TESSERA_CONTROL_KEYS` when set (an operator's own), else the
/// state directory's `control.keys`, made on first start.
pub fn control_keys(state_dir: &Path) -> anyhow::Result<ControlKeys> {
    let spec = control_keys_spec(state_dir)?;
    ControlKeys::from_spec(&spec)
        .with_context(|| format!("the control keys ({KEYS_ENV} or control.keys)"))
}

/// The control keys as written (what `TESSERA_CONTROL_KEYS` holds).
pub fn control_keys_spec(state_dir: &Path) -> anyhow::Result<String> {
    match std::env::var(KEYS_ENV) {
        Ok(spec) if !spec.trim().is_empty() => Ok(spec),
        _ => read_or_make(&state_dir.join("control.keys"), || {
            ControlKeys::generate_spec(tessera::unix_now())
        }),
    }
}

/// The credential of `principal` under the state directory's control keys.
pub fn credential(state_dir: &Path, principal: &Principal) -> anyhow::Result<Credential> {
    Ok(control_keys(state_dir)?.issue(principal))
}

fn read_or_make(path: &Path, make: impl FnOnce() -> String) -> anyhow::Result<String> {
    if let Ok(spec) = std::fs::read_to_string(path) {
        return Ok(spec.trim().to_string());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        restrict(dir, 0o700).with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    // Written aside, then linked into place: a reader never sees half a file, and of two
    // processes making it at once (a `tessera credential` beside a starting `up`), one wins
    // and the other reads what the winner wrote.
    let spec = make();
    let aside = path.with_extension(format!("new-{}", std::process::id()));
    let _ = std::fs::remove_file(&aside);
    write_private(&aside, &spec).with_context(|| format!("cannot write {}", aside.display()))?;
    let linked = std::fs::hard_link(&aside, path);
    let _ = std::fs::remove_file(&aside);
    match linked {
        Ok(()) => Ok(spec),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().to_string())
        }
        Err(e) => Err(e).with_context(|| format!("cannot write {}", path.display())),
    }
}

fn restrict(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())
}
