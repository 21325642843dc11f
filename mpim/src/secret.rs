//! The token-signing secret of an embedded deployment: made once, kept in the data
//! directory, so that tokens stay valid across restarts.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

/// The file, inside the data directory.
const FILE: &str = "jwt-secret";

/// The secret stored in `data`, made (64 random hex digits, readable only by this user)
/// when there is none.
///
/// # Errors
/// When the file can be neither read nor created.
pub(crate) fn load_or_create(data: &Path) -> anyhow::Result<String> {
    let path = data.join(FILE);
    match fs::read_to_string(&path) {
        Ok(secret) if !secret.trim().is_empty() => return Ok(secret.trim().to_owned()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret: String = (0..4)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(secret.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("mpim-secret-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let first = load_or_create(&dir).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create(&dir).unwrap(), first);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.join(FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
