//! Where the scheduler takes the time from: the system clock, or (for tests, behind a hidden
//! agent flag) a file holding Unix seconds that the test rewrites to move time on.

use super::calendar::UnixSecs;
use std::path::PathBuf;
use std::time::Duration;

pub trait Clock: Send + Sync {
    /// Now, in Unix seconds; an error says why the time cannot be read.
    fn now(&self) -> Result<UnixSecs, String>;
    /// How long the scheduler sleeps between looks when nothing wakes it.
    fn poll_interval(&self) -> Duration;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Result<UnixSecs, String> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .map_err(|e| format!("the system clock is before 1970: {e}"))
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The time is the decimal number of Unix seconds in a file, read at every look, so a test
/// moves the agent's policy clock by rewriting it (atomically: write elsewhere, rename).
pub struct FileClock {
    pub path: PathBuf,
}

impl Clock for FileClock {
    fn now(&self) -> Result<UnixSecs, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read the test clock {}: {e}", self.path.display()))?;
        text.trim().parse().map_err(|_| {
            format!(
                "the test clock {} holds {:?}, not Unix seconds",
                self.path.display(),
                text.trim()
            )
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(50)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_clock_reads_what_the_file_says() {
        let dir = tempfile::tempdir().unwrap();
        let clock = FileClock {
            path: dir.path().join("now"),
        };
        assert!(clock.now().unwrap_err().contains("cannot read"));
        std::fs::write(&clock.path, "1796566226\n").unwrap();
        assert_eq!(clock.now(), Ok(1_796_566_226));
        std::fs::write(&clock.path, "soon").unwrap();
        assert!(clock.now().unwrap_err().contains("not Unix seconds"));
        assert!(SystemClock.now().unwrap() > 1_700_000_000);
    }
}
