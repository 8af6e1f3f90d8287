//! The one place agent errors become CSI errors. The agent's codes already follow CSI's
//! meaning (its API was written for it: OUT_OF_RANGE for sizes, RESOURCE_EXHAUSTED for a full
//! store, FAILED_PRECONDITION for a state that forbids the call), so the code is kept and the
//! message says which agent call failed. A transport failure (agent down or restarting)
//! becomes UNAVAILABLE, which the sidecars retry.

use tonic::{Code, Status};

pub fn from_agent(what: &str, s: Status) -> Status {
    let code = match s.code() {
        // tonic reports a refused or broken connection as UNKNOWN or UNAVAILABLE depending on
        // where it broke; either way the agent is not there.
        Code::Unknown if s.message().contains("transport") => Code::Unavailable,
        c => c,
    };
    Status::new(code, format!("{what}: agent: {}", s.message()))
}

pub fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// CSI's size limit for a string field that names none of its own.
pub const MAX_NAME_BYTES: usize = 128;

/// A CreateVolume or CreateSnapshot name: required, and within CSI's 128 bytes.
pub fn check_name(name: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(invalid("name is required"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "name is {} bytes; CSI names are at most {MAX_NAME_BYTES} bytes",
            name.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_kept_and_messages_say_what_failed() {
        let s = from_agent("creating volume x", Status::out_of_range("too big"));
        assert_eq!(s.code(), Code::OutOfRange);
        assert_eq!(s.message(), "creating volume x: agent: too big");
        let s = from_agent("x", Status::unknown("transport error"));
        assert_eq!(s.code(), Code::Unavailable);
    }
}
