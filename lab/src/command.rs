//! Running a command to completion, with what it printed in the error when it fails. The one
//! implementation in this workspace: the lab, perf and the tests (through testkit) use it.

use std::io;
use std::process::{Command, ExitStatus};

/// How much of a command an error shows (perf's scripts run to many lines).
const SHOWN_CHARS: usize = 300;

/// A command that could not be started, or that exited unsuccessfully.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` could not be run: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stdout}{stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
}

/// Runs `cmd` and returns its standard output.
pub fn run(cmd: &mut Command) -> Result<String, CommandError> {
    let shown = format!("{cmd:?}");
    output_of(cmd, &shown)
}

/// Runs `script` with `sh -c` and returns its standard output.
pub fn sh(script: &str) -> Result<String, CommandError> {
    output_of(Command::new("sh").arg("-c").arg(script), script)
}

fn output_of(cmd: &mut Command, shown: &str) -> Result<String, CommandError> {
    let command = || match shown.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &shown[..end]),
        None => shown.to_string(),
    };
    let out = cmd.output().map_err(|source| CommandError::Spawn {
        command: command(),
        source,
    })?;
    if !out.status.success() {
        return Err(CommandError::Failed {
            command: command(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_on_success_and_in_the_error_on_failure() {
        assert_eq!(sh("echo hi").unwrap(), "hi\n");
        let e = sh("echo out; echo err >&2; exit 3")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 3") && e.contains("out\nerr"),
            "{e}"
        );
        let long = format!("false {}", "x".repeat(1000));
        assert!(sh(&long).unwrap_err().to_string().len() < 400);
        let e = run(&mut Command::new("/nonexistent")).unwrap_err();
        assert!(matches!(e, CommandError::Spawn { .. }), "{e}");
    }
}
