//! Requests as the reader sees them: which command a header names, and the
//! checks that turn a header (plus a WRITE's payload) into an [`Op`] or the
//! error to reply with. Pure: nothing here does I/O, so the fuzzer and the
//! unit tests drive it from plain headers.

use super::buffers::Buffer;
use crate::error::NbdError;
use crate::export::{Fua, ZeroMode};
use crate::observer::RequestKind;
use crate::proto::{self, RequestHeader};

/// A validated request, ready to run against the export.
#[derive(Debug)]
pub enum Op {
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    Write {
        offset: u64,
        data: Buffer,
        fua: Fua,
    },
    Flush,
    Trim {
        offset: u64,
        len: u32,
        fua: Fua,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        mode: ZeroMode,
        fua: Fua,
    },
    BlockStatus {
        offset: u64,
        len: u32,
        req_one: bool,
    },
}

pub fn kind_of(command: u16) -> RequestKind {
    match command {
        proto::CMD_READ => RequestKind::Read,
        proto::CMD_WRITE => RequestKind::Write,
        proto::CMD_DISC => RequestKind::Disconnect,
        proto::CMD_FLUSH => RequestKind::Flush,
        proto::CMD_TRIM => RequestKind::Trim,
        proto::CMD_WRITE_ZEROES => RequestKind::WriteZeroes,
        proto::CMD_BLOCK_STATUS => RequestKind::BlockStatus,
        _ => RequestKind::Unknown,
    }
}

/// What a validator needs to know about the session; split out so tests and
/// the fuzzer can validate headers without a live export.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub size: u64,
    pub read_only: bool,
    pub structured: bool,
    pub has_contexts: bool,
    pub max_payload: u32,
}

fn check_range(op: &'static str, offset: u64, len: u32, size: u64) -> Result<(), NbdError> {
    match offset.checked_add(u64::from(len)) {
        Some(end) if end <= size => Ok(()),
        _ => Err(NbdError::OutOfRange {
            op,
            offset,
            len: u64::from(len),
            size,
        }),
    }
}

fn check_write_range(op: &'static str, offset: u64, len: u32, size: u64) -> Result<(), NbdError> {
    check_range(op, offset, len, size).map_err(|_| NbdError::WritePastEnd {
        op,
        offset,
        len: u64::from(len),
        size,
    })
}

/// A command that changes data: refused on a read-only export, and past
/// the end with the write-specific error.
fn check_writable(op: &'static str, h: &RequestHeader, l: &Limits) -> Result<(), NbdError> {
    if l.read_only {
        return Err(NbdError::ReadOnly {
            export: String::new(),
        });
    }
    check_write_range(op, h.offset, h.length, l.size)
}

fn check_flags(flags: u16, allowed: u16, cmd: &str) -> Result<(), NbdError> {
    if flags & !allowed != 0 {
        return Err(NbdError::InvalidRequest {
            reason: format!("flags {flags:#x} not valid for {cmd}"),
        });
    }
    Ok(())
}

/// Turns a parsed header (plus the WRITE payload, already read) into an
/// [`Op`], or the error to reply with. Pure: no I/O.
pub fn validate(h: &RequestHeader, payload: Option<Buffer>, l: &Limits) -> Result<Op, NbdError> {
    let fua = Fua(h.flags & proto::CMD_FLAG_FUA != 0);
    // Clients are known to set FUA on any command, so it is accepted everywhere.
    let base = proto::CMD_FLAG_FUA;
    match h.command {
        proto::CMD_READ => {
            let df_ok = if l.structured { proto::CMD_FLAG_DF } else { 0 };
            check_flags(h.flags, base | df_ok, "READ")?;
            if h.length > l.max_payload {
                return Err(NbdError::TooLarge {
                    len: u64::from(h.length),
                    max: u64::from(l.max_payload),
                });
            }
            check_range("read", h.offset, h.length, l.size)?;
            Ok(Op::Read {
                offset: h.offset,
                len: h.length,
                df: h.flags & proto::CMD_FLAG_DF != 0,
            })
        }
        proto::CMD_WRITE => {
            check_flags(h.flags, base, "WRITE")?;
            check_writable("write", h, l)?;
            let data = payload.ok_or(NbdError::Malformed {
                what: "write request",
                reason: "payload missing",
            })?;
            Ok(Op::Write {
                offset: h.offset,
                data,
                fua,
            })
        }
        proto::CMD_FLUSH => {
            check_flags(h.flags, base, "FLUSH")?;
            Ok(Op::Flush)
        }
        proto::CMD_TRIM => {
            check_flags(h.flags, base, "TRIM")?;
            check_writable("trim", h, l)?;
            Ok(Op::Trim {
                offset: h.offset,
                len: h.length,
                fua,
            })
        }
        proto::CMD_WRITE_ZEROES => {
            check_flags(h.flags, base | proto::CMD_FLAG_NO_HOLE, "WRITE_ZEROES")?;
            check_writable("write_zeroes", h, l)?;
            let mode = if h.flags & proto::CMD_FLAG_NO_HOLE != 0 {
                ZeroMode::NoHole
            } else {
                ZeroMode::MayTrim
            };
            Ok(Op::WriteZeroes {
                offset: h.offset,
                len: h.length,
                mode,
                fua,
            })
        }
        proto::CMD_BLOCK_STATUS => {
            check_flags(h.flags, base | proto::CMD_FLAG_REQ_ONE, "BLOCK_STATUS")?;
            if !l.structured || !l.has_contexts {
                return Err(NbdError::InvalidRequest {
                    reason: "BLOCK_STATUS without a negotiated metadata context".into(),
                });
            }
            if h.length == 0 {
                return Err(NbdError::InvalidRequest {
                    reason: "BLOCK_STATUS of zero length".into(),
                });
            }
            check_range("block_status", h.offset, h.length, l.size)?;
            Ok(Op::BlockStatus {
                offset: h.offset,
                len: h.length,
                req_one: h.flags & proto::CMD_FLAG_REQ_ONE != 0,
            })
        }
        other => Err(NbdError::InvalidRequest {
            reason: format!("unknown command {other}"),
        }),
    }
}

/// `validate` cannot know the export's name; the reader puts it into a
/// read-only refusal before the error is logged and sent.
pub(super) fn name_export(e: NbdError, export: &str) -> NbdError {
    match e {
        NbdError::ReadOnly { .. } => NbdError::ReadOnly {
            export: export.to_owned(),
        },
        other => other,
    }
}
