//! The `lapsd sim` flags as the tests give them, and a folder for the files they read.

use std::path::PathBuf;

use clap::Parser;
use lapsd_sim::cli::SimArgs;

#[derive(Parser)]
pub struct Cli {
    #[command(flatten)]
    pub args: SimArgs,
}

/// `lapsd sim EXTRA...`, parsed.
pub fn args(extra: &[&str]) -> SimArgs {
    let mut argv = vec!["sim"];
    argv.extend_from_slice(extra);
    Cli::try_parse_from(argv).expect("flags parse").args
}

/// A folder of its own under the system temp dir (its name and the process id, so parallel test
/// binaries do not meet), removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }

    /// Writes `text` to the file `name` in it; returns its path as a flag takes it.
    pub fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
