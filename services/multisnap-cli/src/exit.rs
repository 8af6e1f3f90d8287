//! Exit codes scripts can rely on. They are part of the CLI's contract (see `--help` and the
//! README), so the mapping from gRPC status codes lives here and nowhere else.

use std::fmt;
use std::process::ExitCode;

pub const SUCCESS: u8 = 0;
/// clap's own usage errors; clap would say 2, which we reserve for "not found".
pub const USAGE: u8 = 1;
pub const NOT_FOUND: u8 = 2;
pub const ALREADY_EXISTS: u8 = 3;
pub const INVALID_ARGUMENT: u8 = 4;
pub const FAILED_PRECONDITION: u8 = 5;
pub const RESOURCE_EXHAUSTED: u8 = 6;
pub const UNAVAILABLE: u8 = 7;
pub const OTHER: u8 = 8;

/// Shown at the end of `multisnap --help`.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  usage error (bad command line)
  2  not found (no such volume or snapshot)
  3  already exists (the name is taken by something different)
  4  invalid argument (e.g. a malformed name or size refused by the agent), or out of range
     (volume resize to a size the volume cannot take)
  5  failed precondition (e.g. deleting a volume that has snapshots without --force)
  6  resource exhausted (the store is full)
  7  unavailable: cannot connect to the agent, or it timed out
  8  any other error

Errors are printed on stderr, including the agent's message.";

/// A gRPC call the agent answered with an error.
#[derive(Debug)]
pub struct RpcError {
    pub action: String,
    pub status: tonic::Status,
}

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // tonic's own Display dumps metadata and details; people want the code and message.
        let what = match self.status.code() {
            tonic::Code::NotFound => "not found",
            tonic::Code::AlreadyExists => "already exists",
            tonic::Code::InvalidArgument => "invalid argument",
            tonic::Code::OutOfRange => "out of range",
            tonic::Code::FailedPrecondition => "failed precondition",
            tonic::Code::ResourceExhausted => "resource exhausted",
            tonic::Code::Unavailable => "unavailable",
            tonic::Code::DeadlineExceeded => "timed out",
            other => return write!(f, "{}: {other:?}: {}", self.action, self.status.message()),
        };
        write!(f, "{}: {what}: {}", self.action, self.status.message())
    }
}

impl std::error::Error for RpcError {}

/// Wraps a failed call with what was being attempted, for `map_err`.
pub fn rpc(action: impl Into<String>) -> impl FnOnce(tonic::Status) -> RpcError {
    let action = action.into();
    move |status| RpcError { action, status }
}

/// The agent could not be reached at all.
#[derive(Debug)]
pub struct ConnectError {
    pub endpoint: String,
    pub source: tonic::transport::Error,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot connect to the agent at {} (is multisnap-agent running? see --endpoint)",
            self.endpoint
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

pub fn code_for_status(code: tonic::Code) -> u8 {
    match code {
        tonic::Code::Ok => SUCCESS,
        tonic::Code::NotFound => NOT_FOUND,
        tonic::Code::AlreadyExists => ALREADY_EXISTS,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => INVALID_ARGUMENT,
        tonic::Code::FailedPrecondition => FAILED_PRECONDITION,
        tonic::Code::ResourceExhausted => RESOURCE_EXHAUSTED,
        // A deadline is a reachability problem from a script's point of view: retry later.
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => UNAVAILABLE,
        _ => OTHER,
    }
}

/// The exit code for an error that reached `main`.
pub fn code_for(err: &anyhow::Error) -> ExitCode {
    let code = err
        .chain()
        .find_map(|e| {
            if let Some(r) = e.downcast_ref::<RpcError>() {
                Some(code_for_status(r.status.code()))
            } else if e.downcast_ref::<ConnectError>().is_some() {
                Some(UNAVAILABLE)
            } else {
                None
            }
        })
        .unwrap_or(OTHER);
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_documented_exit_codes() {
        assert_eq!(code_for_status(tonic::Code::NotFound), 2);
        assert_eq!(code_for_status(tonic::Code::AlreadyExists), 3);
        assert_eq!(code_for_status(tonic::Code::InvalidArgument), 4);
        assert_eq!(code_for_status(tonic::Code::FailedPrecondition), 5);
        assert_eq!(code_for_status(tonic::Code::ResourceExhausted), 6);
        assert_eq!(code_for_status(tonic::Code::Unavailable), 7);
        assert_eq!(code_for_status(tonic::Code::Internal), 8);
        assert_eq!(code_for_status(tonic::Code::Unknown), 8);
    }

    #[test]
    fn rpc_errors_show_the_agent_message() {
        let e = rpc("cannot create volume a")(tonic::Status::already_exists("volume a exists"));
        assert_eq!(
            e.to_string(),
            "cannot create volume a: already exists: volume a exists"
        );
        let e = anyhow::Error::new(e);
        assert_eq!(code_for(&e), ExitCode::from(3));
    }
}
