use super::*;

fn request(magic: u32, flags: u16, cmd: u16, handle: u64, offset: u64, len: u32) -> [u8; 28] {
    let mut b = [0u8; 28];
    b[..4].copy_from_slice(&magic.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&cmd.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..24].copy_from_slice(&offset.to_be_bytes());
    b[24..].copy_from_slice(&len.to_be_bytes());
    b
}

#[test]
fn request_header_round_trips_fields() {
    let b = request(
        REQUEST_MAGIC,
        CMD_FLAG_FUA,
        CMD_WRITE,
        0xdead_beef,
        4096,
        512,
    );
    let h = parse_request_header(&b).unwrap();
    assert_eq!(h.flags, CMD_FLAG_FUA);
    assert_eq!(h.command, CMD_WRITE);
    assert_eq!(h.handle, Handle(0xdead_beef));
    assert_eq!(h.offset, 4096);
    assert_eq!(h.length, 512);
}

#[test]
fn request_header_rejects_bad_magic() {
    let b = request(SIMPLE_REPLY_MAGIC, 0, CMD_READ, 1, 0, 1);
    assert!(matches!(
        parse_request_header(&b),
        Err(NbdError::BadMagic {
            what: "request",
            ..
        })
    ));
}

#[test]
fn option_header_parses_and_checks_magic() {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
    b[8..12].copy_from_slice(&OPT_GO.to_be_bytes());
    b[12..].copy_from_slice(&77u32.to_be_bytes());
    assert_eq!(
        parse_option_header(&b).unwrap(),
        OptionHeader {
            option: OPT_GO,
            length: 77
        }
    );
    b[0] ^= 1;
    assert!(parse_option_header(&b).is_err());
}

#[test]
fn client_flags_reject_unknown_bits() {
    assert_eq!(parse_client_flags([0, 0, 0, 3]).unwrap(), 3);
    assert!(matches!(
        parse_client_flags([0, 0, 0, 4]),
        Err(NbdError::UnknownClientFlags { flags: 4 })
    ));
    assert!(parse_client_flags([0x80, 0, 0, 1]).is_err());
}

fn info_payload(name: &[u8], reqs: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

#[test]
fn info_request_parses() {
    let d = info_payload(b"vol@snap", &[INFO_NAME, INFO_BLOCK_SIZE]);
    let r = parse_info_request(&d).unwrap();
    assert_eq!(r.name, "vol@snap");
    assert_eq!(r.requests, vec![INFO_NAME, INFO_BLOCK_SIZE]);
}

#[test]
fn info_request_rejects_inconsistent_lengths() {
    // Name length larger than the payload.
    let mut d = info_payload(b"abc", &[]);
    d[3] = 200;
    assert!(parse_info_request(&d).is_err());
    // Fewer info requests than announced.
    let mut d = info_payload(b"abc", &[1]);
    d.pop();
    assert!(parse_info_request(&d).is_err());
    // Trailing garbage.
    let mut d = info_payload(b"abc", &[]);
    d.push(0);
    assert!(parse_info_request(&d).is_err());
    // Name length near u32::MAX must not allocate or overflow.
    let mut d = info_payload(b"", &[]);
    d[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(parse_info_request(&d).is_err());
    // Empty payload.
    assert!(parse_info_request(&[]).is_err());
}

#[test]
fn strings_must_be_utf8_without_nul() {
    assert!(parse_info_request(&info_payload(b"a\0b", &[])).is_err());
    assert!(parse_info_request(&info_payload(&[0xff, 0xfe], &[])).is_err());
    let long = vec![b'a'; MAX_STRING_LEN + 1];
    assert!(parse_info_request(&info_payload(&long, &[])).is_err());
}

fn meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut d = (export.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        d.extend_from_slice(&(q.len() as u32).to_be_bytes());
        d.extend_from_slice(q.as_bytes());
    }
    d
}

#[test]
fn meta_context_request_parses() {
    let d = meta_payload("default", &["base:allocation", "multisnap:"]);
    let r = parse_meta_context_request(&d).unwrap();
    assert_eq!(r.export, "default");
    assert_eq!(r.queries, vec!["base:allocation", "multisnap:"]);
}

#[test]
fn meta_context_request_with_huge_query_count_fails_cleanly() {
    let mut d = meta_payload("x", &[]);
    let n = d.len();
    d[n - 4..].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(parse_meta_context_request(&d).is_err());
}

#[test]
fn greeting_has_magics_and_flags() {
    let g = encode_greeting();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(u16::from_be_bytes([g[16], g[17]]), 3);
}

#[test]
fn option_reply_layout() {
    let r = encode_option_reply(OPT_LIST, REP_ACK, b"xy");
    assert_eq!(r.len(), 22);
    assert_eq!(&r[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[8..12], &OPT_LIST.to_be_bytes());
    assert_eq!(&r[12..16], &REP_ACK.to_be_bytes());
    assert_eq!(&r[16..20], &2u32.to_be_bytes());
    assert_eq!(&r[20..], b"xy");
}

#[test]
fn structured_error_layout() {
    let r = encode_structured_error(Handle(9), REPLY_FLAG_DONE, Errno::EINVAL, "bad", Some(42));
    assert_eq!(&r[..4], &STRUCTURED_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[4..6], &REPLY_FLAG_DONE.to_be_bytes());
    assert_eq!(&r[6..8], &REPLY_TYPE_ERROR_OFFSET.to_be_bytes());
    assert_eq!(&r[8..16], &9u64.to_be_bytes());
    assert_eq!(&r[16..20], &(6u32 + 3 + 8).to_be_bytes());
    assert_eq!(&r[20..24], &22u32.to_be_bytes());
    assert_eq!(&r[24..26], &3u16.to_be_bytes());
    assert_eq!(&r[26..29], b"bad");
    assert_eq!(&r[29..], &42u64.to_be_bytes());
    let r = encode_structured_error(Handle(1), 0, Errno::EIO, "", None);
    assert_eq!(&r[6..8], &REPLY_TYPE_ERROR.to_be_bytes());
    assert_eq!(r.len(), 26);
}

#[test]
fn long_messages_are_clipped_on_char_boundary() {
    let s = "é".repeat(3000); // 6000 bytes
    let c = clip_message(&s);
    assert!(c.len() <= MAX_STRING_LEN);
    assert!(c.chars().all(|ch| ch == 'é'));
}

#[test]
fn simple_reply_layout() {
    let r = encode_simple_reply(Handle(0x0102), Errno::EPERM);
    assert_eq!(&r[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    assert_eq!(&r[4..8], &1u32.to_be_bytes());
    assert_eq!(&r[8..], &0x0102u64.to_be_bytes());
}
