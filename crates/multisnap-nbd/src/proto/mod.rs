//! Wire format of the NBD protocol: constants, newtypes and pure parsers /
//! encoders. Nothing here does I/O, so every parser can be driven by unit
//! tests and by the fuzzer from plain byte slices.
//!
//! Numbers come from the NBD protocol specification (doc/proto.md of the
//! reference implementation).

// Defined beside `NbdError::errno`, its one producer; the reply encoders here
// take it, so it stays reachable as `proto::Errno` too.
pub use crate::error::Errno;
use crate::error::NbdError;

/// "NBDMAGIC", first thing the server sends.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// "IHAVEOPT", sent by the server in the greeting and by the client before
/// every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_SEND_DF: u16 = 1 << 7;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// The option needs TLS first (sent only while TLS is required and not yet up).
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// NBD_INFO_* types carried by NBD_REP_INFO.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

// Structured reply flags and types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) + 2;

// base:allocation status flags.
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

/// Name of the one metadata context the spec defines.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Longest string (export name, query, message) the spec allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Size of a client request header on the wire.
pub const REQUEST_HEADER_LEN: usize = 28;
/// Size of an option header (magic, option, length) on the wire.
pub const OPTION_HEADER_LEN: usize = 16;

/// The opaque 64-bit request tag ("handle"/"cookie") the client picks and
/// the server echoes back. A newtype so it is never confused with an offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Handle(pub u64);

/// Id the server assigns to a metadata context in NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContextId(pub u32);

/// Fixed part of an option sent by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub length: u32,
}

/// One transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub handle: Handle,
    pub offset: u64,
    pub length: u32,
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// Little cursor over a byte slice whose every read is bounds-checked, so
/// client-controlled lengths can never index past the end.
struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], NbdError> {
        if n > self.buf.len() {
            return Err(NbdError::Malformed {
                what: self.what,
                reason: "truncated",
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, NbdError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, NbdError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, NbdError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    fn string(&mut self, len: u32) -> Result<String, NbdError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_STRING_LEN {
            return Err(NbdError::Malformed {
                what: self.what,
                reason: "string longer than 4096 bytes",
            });
        }
        let bytes = self.take(len)?;
        parse_string(bytes, self.what)
    }

    fn finish(&self) -> Result<(), NbdError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(NbdError::Malformed {
                what: self.what,
                reason: "trailing bytes",
            })
        }
    }
}

/// Validates an NBD string: UTF-8, no NUL, at most 4096 bytes.
pub fn parse_string(bytes: &[u8], what: &'static str) -> Result<String, NbdError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(NbdError::Malformed {
            what,
            reason: "string longer than 4096 bytes",
        });
    }
    if bytes.contains(&0) {
        return Err(NbdError::Malformed {
            what,
            reason: "string contains NUL",
        });
    }
    String::from_utf8(bytes.to_vec()).map_err(|_| NbdError::Malformed {
        what,
        reason: "string is not UTF-8",
    })
}

/// Client flags word after the greeting. Unknown bits mean the client and
/// server disagree on the protocol, and the spec says to drop the connection.
pub fn parse_client_flags(word: [u8; 4]) -> Result<u32, NbdError> {
    let flags = u32::from_be_bytes(word);
    let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
    if flags & !known != 0 {
        return Err(NbdError::UnknownClientFlags { flags });
    }
    Ok(flags)
}

pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, NbdError> {
    let mut c = Cursor::new(b, "option header");
    let magic = c.u64()?;
    if magic != IHAVEOPT {
        return Err(NbdError::BadMagic {
            what: "option",
            found: magic,
        });
    }
    Ok(OptionHeader {
        option: c.u32()?,
        length: c.u32()?,
    })
}

pub fn parse_request_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, NbdError> {
    let mut c = Cursor::new(b, "request header");
    let magic = c.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(NbdError::BadMagic {
            what: "request",
            found: u64::from(magic),
        });
    }
    Ok(RequestHeader {
        flags: c.u16()?,
        command: c.u16()?,
        handle: Handle(c.u64()?),
        offset: c.u64()?,
        length: c.u32()?,
    })
}

pub fn parse_info_request(data: &[u8]) -> Result<InfoRequest, NbdError> {
    let mut c = Cursor::new(data, "NBD_OPT_INFO/GO payload");
    let name_len = c.u32()?;
    let name = c.string(name_len)?;
    let n = c.u16()?;
    let mut requests = Vec::with_capacity(usize::from(n).min(64));
    for _ in 0..n {
        requests.push(c.u16()?);
    }
    c.finish()?;
    Ok(InfoRequest { name, requests })
}

pub fn parse_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, NbdError> {
    let mut c = Cursor::new(data, "meta context payload");
    let export_len = c.u32()?;
    let export = c.string(export_len)?;
    let n = c.u32()?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = c.u32()?;
        queries.push(c.string(len)?);
    }
    c.finish()?;
    Ok(MetaContextRequest { export, queries })
}

/// Server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub fn encode_greeting() -> [u8; 18] {
    let mut b = [0u8; 18];
    b[..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    b
}

pub fn encode_option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// Error replies carry a human-readable message; clip it to the spec's
/// string limit on a character boundary.
pub fn clip_message(msg: &str) -> &str {
    if msg.len() <= MAX_STRING_LEN {
        return msg;
    }
    let mut end = MAX_STRING_LEN;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    &msg[..end]
}

pub fn encode_simple_reply(handle: Handle, error: Errno) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.0.to_be_bytes());
    b[8..].copy_from_slice(&handle.0.to_be_bytes());
    b
}

pub fn encode_structured_header(
    handle: Handle,
    flags: u16,
    kind: u16,
    payload_len: u32,
) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.0.to_be_bytes());
    b[16..].copy_from_slice(&payload_len.to_be_bytes());
    b
}

/// NBD_REPLY_TYPE_ERROR or _ERROR_OFFSET chunk, complete with header.
pub fn encode_structured_error(
    handle: Handle,
    flags: u16,
    error: Errno,
    message: &str,
    offset: Option<u64>,
) -> Vec<u8> {
    let msg = clip_message(message).as_bytes();
    let msg_len = u16::try_from(msg.len()).unwrap_or(0);
    let msg = msg.get(..usize::from(msg_len)).unwrap_or(&[]);
    let (kind, extra) = match offset {
        Some(_) => (REPLY_TYPE_ERROR_OFFSET, 8),
        None => (REPLY_TYPE_ERROR, 0),
    };
    let payload_len = 6 + msg.len() + extra;
    let mut b = Vec::with_capacity(20 + payload_len);
    b.extend_from_slice(&encode_structured_header(
        handle,
        flags,
        kind,
        u32::try_from(payload_len).unwrap_or(0),
    ));
    b.extend_from_slice(&error.0.to_be_bytes());
    b.extend_from_slice(&msg_len.to_be_bytes());
    b.extend_from_slice(msg);
    if let Some(off) = offset {
        b.extend_from_slice(&off.to_be_bytes());
    }
    b
}

#[cfg(test)]
mod tests;
