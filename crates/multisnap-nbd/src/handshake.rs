//! Fixed-newstyle option haggling: from the greeting to the moment a client
//! picks an export with NBD_OPT_EXPORT_NAME or NBD_OPT_GO.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::error::NbdError;
use crate::export::{Export, ExportInfo, ExportProvider};
use crate::proto::{self, ContextId, OptionHeader};

/// Options bigger than this are refused with NBD_REP_ERR_TOO_BIG rather than
/// buffered; no legitimate option comes near it.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// Oversized options up to this size are skipped so the client can go on;
/// beyond it we treat the client as hostile and close.
const MAX_OPTION_DISCARD: u32 = 1024 * 1024;

/// A metadata context selected with NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaContext {
    BaseAllocation,
    /// A context the export defines itself (see `Export::meta_contexts`).
    Named(String),
}

impl MetaContext {
    pub fn name(&self) -> &str {
        match self {
            MetaContext::BaseAllocation => proto::BASE_ALLOCATION,
            MetaContext::Named(n) => n,
        }
    }
}

/// What the handshake settled on; everything transmission needs.
pub struct Session {
    pub export_name: String,
    pub export: Arc<dyn Export>,
    pub info: ExportInfo,
    pub structured: bool,
    pub contexts: Vec<(ContextId, MetaContext)>,
    pub transmission_flags: u16,
    /// Largest READ/WRITE payload accepted on this connection.
    pub max_payload: u32,
}

/// Transmission flags, advertised only for what the server really does.
pub fn transmission_flags(info: &ExportInfo, structured: bool) -> u16 {
    let mut f = proto::TFLAG_HAS_FLAGS | proto::TFLAG_SEND_FLUSH | proto::TFLAG_SEND_FUA;
    if info.read_only {
        f |= proto::TFLAG_READ_ONLY;
    } else {
        f |= proto::TFLAG_SEND_TRIM | proto::TFLAG_SEND_WRITE_ZEROES;
    }
    if structured {
        // DF is only meaningful with structured replies; the spec forbids
        // advertising it otherwise.
        f |= proto::TFLAG_SEND_DF;
    }
    if info.multi_conn {
        f |= proto::TFLAG_CAN_MULTI_CONN;
    }
    f
}

/// Option-phase state that survives between options.
struct Haggle {
    structured: bool,
    /// Contexts chosen by the last SET_META_CONTEXT and the export they were
    /// chosen for; they only apply if GO names the same export.
    contexts: Option<(String, Vec<(ContextId, MetaContext)>)>,
}

/// Where a connection stands with TLS while options are haggled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsState {
    /// No TLS on this listener: NBD_OPT_STARTTLS gets NBD_REP_ERR_UNSUP.
    Unavailable,
    /// The client may upgrade or carry on in plaintext.
    Offered,
    /// Nothing but NBD_OPT_STARTTLS and NBD_OPT_ABORT is served until the client upgrades.
    Required,
    /// The connection runs inside TLS; another NBD_OPT_STARTTLS gets NBD_REP_ERR_INVALID.
    Active,
}

impl TlsState {
    /// The state a new connection starts in under `policy`.
    pub fn before_upgrade(policy: crate::tls::TlsPolicy) -> TlsState {
        match policy {
            crate::tls::TlsPolicy::Off => TlsState::Unavailable,
            crate::tls::TlsPolicy::Offered => TlsState::Offered,
            crate::tls::TlsPolicy::Required => TlsState::Required,
        }
    }
}

/// How option haggling ended.
pub enum Negotiated {
    /// The client picked an export.
    Session(Session),
    /// NBD_OPT_STARTTLS was acknowledged: the caller runs the TLS handshake on the stream,
    /// then [`haggle`] again inside TLS with [`TlsState::Active`]. The client flags are not
    /// sent again, so `no_zeroes` carries them over.
    StartTls { no_zeroes: bool },
    /// The client went away or aborted politely.
    Left,
}

/// Runs the handshake from the greeting. `Err` means a protocol violation and the caller
/// closes.
pub async fn negotiate<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    config: &ServerConfig,
    shutdown: &CancellationToken,
    tls: TlsState,
) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(client_flags) = greet(stream).await? else {
        return Ok(Negotiated::Left);
    };
    let no_zeroes = client_flags & proto::FLAG_C_NO_ZEROES != 0;
    haggle(stream, provider, config, shutdown, no_zeroes, tls).await
}

/// Option haggling, from the first option (or the first one inside TLS) until the client
/// picks an export, asks for TLS, or leaves. Options agreed before TLS are forgotten with
/// it: each call starts from a fresh state, since plaintext ones may have been tampered with.
pub async fn haggle<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    config: &ServerConfig,
    shutdown: &CancellationToken,
    no_zeroes: bool,
    tls: TlsState,
) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut st = Haggle {
        structured: false,
        contexts: None,
    };

    loop {
        let (option, data) = match read_option(stream).await? {
            Incoming::Option { option, data } => (option, data),
            Incoming::Refused => continue,
            Incoming::Closed => return Ok(Negotiated::Left),
        };

        if shutdown.is_cancelled() && option != proto::OPT_ABORT {
            reply_err(
                stream,
                option,
                proto::REP_ERR_SHUTDOWN,
                "server is shutting down",
            )
            .await?;
            continue;
        }

        if tls == TlsState::Required && !matches!(option, proto::OPT_STARTTLS | proto::OPT_ABORT) {
            if option == proto::OPT_EXPORT_NAME {
                return Err(NbdError::TlsRequired);
            }
            let msg = "TLS is required: send NBD_OPT_STARTTLS first";
            reply_err(stream, option, proto::REP_ERR_TLS_REQD, msg).await?;
            continue;
        }

        if let Some(name) = dataless_option_name(option) {
            if !data.is_empty() {
                let msg = format!("{name} takes no data");
                reply_err(stream, option, proto::REP_ERR_INVALID, &msg).await?;
                continue;
            }
        }

        match option {
            proto::OPT_EXPORT_NAME => {
                let session = export_name(stream, provider, config, &mut st, no_zeroes, &data);
                return session.await.map(Negotiated::Session);
            }
            proto::OPT_ABORT => {
                // The client may already have closed; a failed ACK is fine.
                let _ = reply_ack(stream, option).await;
                return Ok(Negotiated::Left);
            }
            proto::OPT_LIST => list_exports(stream, provider, option).await?,
            proto::OPT_INFO | proto::OPT_GO => {
                let chosen = info_or_go(stream, provider, config, &mut st, option, &data).await?;
                if let Some(session) = chosen {
                    return Ok(Negotiated::Session(session));
                }
            }
            proto::OPT_STRUCTURED_REPLY => {
                st.structured = true;
                reply_ack(stream, option).await?;
            }
            proto::OPT_LIST_META_CONTEXT | proto::OPT_SET_META_CONTEXT => {
                meta_context(stream, provider, &mut st, option, &data).await?;
            }
            proto::OPT_STARTTLS => match tls {
                TlsState::Unavailable => {
                    let msg = "TLS is not configured on this listener";
                    reply_err(stream, option, proto::REP_ERR_UNSUP, msg).await?;
                }
                TlsState::Active => {
                    let msg = "TLS is already active on this connection";
                    reply_err(stream, option, proto::REP_ERR_INVALID, msg).await?;
                }
                TlsState::Offered | TlsState::Required => {
                    reply_ack(stream, option).await?;
                    return Ok(Negotiated::StartTls { no_zeroes });
                }
            },
            _ => {
                reply_err(
                    stream,
                    option,
                    proto::REP_ERR_UNSUP,
                    &format!("option {option} is not supported"),
                )
                .await?;
            }
        }
    }
}

/// The server's greeting, then the client's flags; `None` if the client left first.
async fn greet<S>(stream: &mut S) -> Result<Option<u32>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&proto::encode_greeting()).await?;
    stream.flush().await?;
    let mut word = [0u8; 4];
    if read_or_eof(stream, &mut word).await?.is_none() {
        return Ok(None);
    }
    Ok(Some(proto::parse_client_flags(word)?))
}

/// Options a refused client may send before the server stops answering.
const MAX_REFUSED_OPTIONS: usize = 16;

/// The handshake of a client the server will not serve: the greeting, then every option
/// answered NBD_REP_ERR_POLICY with `reason` until the client aborts or leaves.
pub async fn refuse<S>(stream: &mut S, reason: &str) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if greet(stream).await?.is_none() {
        return Ok(());
    }
    for _ in 0..MAX_REFUSED_OPTIONS {
        let option = match read_option(stream).await? {
            Incoming::Option { option, .. } => option,
            Incoming::Refused => continue,
            Incoming::Closed => return Ok(()),
        };
        match option {
            proto::OPT_ABORT => {
                let _ = reply_ack(stream, option).await;
                return Ok(());
            }
            // The old-style choice has no error reply: closing is the only answer.
            proto::OPT_EXPORT_NAME => return Ok(()),
            _ => reply_err(stream, option, proto::REP_ERR_POLICY, reason).await?,
        }
    }
    Ok(())
}

/// What reading one option from the client gave.
enum Incoming {
    /// An option and its data, at most `MAX_OPTION_LEN` bytes.
    Option { option: u32, data: Vec<u8> },
    /// An oversized option, skipped and refused with NBD_REP_ERR_TOO_BIG;
    /// the client may go on with the next one.
    Refused,
    /// The client closed the connection.
    Closed,
}

/// Reads one option header and its data. Oversized options are skipped
/// and refused if that is cheap enough, else they end the connection.
async fn read_option<S>(stream: &mut S) -> Result<Incoming, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut hdr = [0u8; proto::OPTION_HEADER_LEN];
    if read_or_eof(stream, &mut hdr).await?.is_none() {
        return Ok(Incoming::Closed);
    }
    let OptionHeader { option, length } = proto::parse_option_header(&hdr)?;
    debug!(option, length, "option");

    if length > MAX_OPTION_LEN {
        let err = NbdError::OptionTooLarge {
            option,
            len: length,
            max: MAX_OPTION_LEN,
        };
        if option == proto::OPT_EXPORT_NAME || length > MAX_OPTION_DISCARD {
            // EXPORT_NAME has no error reply; a huge payload is not
            // worth reading. Either way the connection ends.
            if option != proto::OPT_EXPORT_NAME {
                reply_err(stream, option, proto::REP_ERR_TOO_BIG, &err.to_string()).await?;
            }
            return Err(err);
        }
        let mut sink = tokio::io::sink();
        let skipped =
            tokio::io::copy(&mut (&mut *stream).take(u64::from(length)), &mut sink).await?;
        if skipped != u64::from(length) {
            return Ok(Incoming::Closed);
        }
        reply_err(stream, option, proto::REP_ERR_TOO_BIG, &err.to_string()).await?;
        return Ok(Incoming::Refused);
    }

    let mut data = vec![0u8; length as usize];
    if read_or_eof(stream, &mut data).await?.is_none() {
        return Ok(Incoming::Closed);
    }
    Ok(Incoming::Option { option, data })
}

/// NBD_OPT_EXPORT_NAME: the old way to pick an export. It has no error
/// reply, so an export that cannot be opened ends the connection.
async fn export_name<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    config: &ServerConfig,
    st: &mut Haggle,
    no_zeroes: bool,
    data: &[u8],
) -> Result<Session, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name = proto::parse_string(data, "NBD_OPT_EXPORT_NAME name")?;
    let (name, export) = open_export(provider, &name).await?;
    let info = export.info();
    let flags = transmission_flags(&info, st.structured);
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&info.size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; 124]);
    }
    stream.write_all(&out).await?;
    stream.flush().await?;
    let contexts = take_contexts(st, &name);
    Ok(session(name, export, info, st, contexts, config))
}

/// NBD_OPT_LIST: one NBD_REP_SERVER per export (name and description),
/// then the ACK.
async fn list_exports<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    option: u32,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let p = provider.clone();
    let list = match blocking("list exports", move || p.list()).await {
        Ok(list) => list,
        Err(e) => {
            warn!(error = %e, "listing exports failed");
            return reply_err(stream, option, proto::REP_ERR_POLICY, &e.to_string()).await;
        }
    };
    let mut out = Vec::new();
    for e in list {
        let mut d = Vec::new();
        let name = proto::clip_message(&e.name);
        d.extend_from_slice(&(name.len() as u32).to_be_bytes());
        d.extend_from_slice(name.as_bytes());
        if let Some(desc) = &e.description {
            d.extend_from_slice(proto::clip_message(desc).as_bytes());
        }
        out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_SERVER, &d));
    }
    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

/// NBD_OPT_INFO and NBD_OPT_GO: describe the named export; GO then ends
/// the handshake with it. Returns the session after a successful GO, `None`
/// after INFO or a refused request (the client may send another option).
async fn info_or_go<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    config: &ServerConfig,
    st: &mut Haggle,
    option: u32,
    data: &[u8],
) -> Result<Option<Session>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = match proto::parse_info_request(data) {
        Ok(r) => r,
        Err(e) => {
            reply_err(stream, option, proto::REP_ERR_INVALID, &e.to_string()).await?;
            return Ok(None);
        }
    };
    let (name, export) = match open_export(provider, &req.name).await {
        Ok(x) => x,
        Err(e) => {
            let code = match e {
                NbdError::ExportNotFound { .. } | NbdError::NoDefaultExport => {
                    proto::REP_ERR_UNKNOWN
                }
                NbdError::ShuttingDown => proto::REP_ERR_SHUTDOWN,
                _ => proto::REP_ERR_POLICY,
            };
            reply_err(stream, option, code, &e.to_string()).await?;
            return Ok(None);
        }
    };
    let info = export.info();
    let mut out = export_info_replies(option, &info, st.structured, config);
    out.extend(requested_info_replies(provider, option, &name, &req.requests).await);
    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;
    if option != proto::OPT_GO {
        return Ok(None);
    }
    let contexts = take_contexts(st, &name);
    Ok(Some(session(name, export, info, st, contexts, config)))
}

/// The NBD_REP_INFO replies every INFO/GO gets: NBD_INFO_EXPORT (size and
/// transmission flags) and NBD_INFO_BLOCK_SIZE.
fn export_info_replies(
    option: u32,
    info: &ExportInfo,
    structured: bool,
    config: &ServerConfig,
) -> Vec<u8> {
    let flags = transmission_flags(info, structured);
    let mut out = Vec::new();
    let mut d = Vec::with_capacity(12);
    d.extend_from_slice(&proto::INFO_EXPORT.to_be_bytes());
    d.extend_from_slice(&info.size.to_be_bytes());
    d.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_INFO, &d));
    // Block sizes are always sent: clients that did not ask
    // simply ignore them, and it keeps them from guessing.
    let bs = effective_block_sizes(info, config);
    let mut d = Vec::with_capacity(14);
    d.extend_from_slice(&proto::INFO_BLOCK_SIZE.to_be_bytes());
    d.extend_from_slice(&bs.0.to_be_bytes());
    d.extend_from_slice(&bs.1.to_be_bytes());
    d.extend_from_slice(&bs.2.to_be_bytes());
    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_INFO, &d));
    out
}

/// The NBD_REP_INFO replies the client asked for by NBD_INFO_* type: the
/// export's name and description, each at most once.
async fn requested_info_replies(
    provider: &Arc<dyn ExportProvider>,
    option: u32,
    name: &str,
    requests: &[u16],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sent_name = false;
    let mut sent_desc = false;
    for r in requests {
        match *r {
            proto::INFO_NAME if !sent_name => {
                sent_name = true;
                let mut d = proto::INFO_NAME.to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_INFO, &d));
            }
            proto::INFO_DESCRIPTION if !sent_desc => {
                sent_desc = true;
                let p = provider.clone();
                let n = name.to_owned();
                let desc = blocking("describe export", move || Ok(p.description(&n)))
                    .await
                    .ok()
                    .flatten();
                if let Some(desc) = desc {
                    let mut d = proto::INFO_DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(proto::clip_message(&desc).as_bytes());
                    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_INFO, &d));
                }
            }
            // Unknown or repeated requests are ignored, as the spec allows.
            _ => {}
        }
    }
    out
}

/// The options that carry no data, by their spec name.
fn dataless_option_name(option: u32) -> Option<&'static str> {
    match option {
        proto::OPT_LIST => Some("NBD_OPT_LIST"),
        proto::OPT_STRUCTURED_REPLY => Some("NBD_OPT_STRUCTURED_REPLY"),
        proto::OPT_STARTTLS => Some("NBD_OPT_STARTTLS"),
        _ => None,
    }
}

fn session(
    export_name: String,
    export: Arc<dyn Export>,
    info: ExportInfo,
    st: &Haggle,
    contexts: Vec<(ContextId, MetaContext)>,
    config: &ServerConfig,
) -> Session {
    let transmission_flags = transmission_flags(&info, st.structured);
    let max_payload = effective_block_sizes(&info, config).2;
    Session {
        export_name,
        export,
        info,
        structured: st.structured,
        contexts,
        transmission_flags,
        max_payload,
    }
}

/// (min, preferred, max) after clamping the export's wishes to what the
/// spec allows and what this server is configured to buffer.
fn effective_block_sizes(info: &ExportInfo, config: &ServerConfig) -> (u32, u32, u32) {
    let bs = info.block_sizes;
    let min = if bs.min.is_power_of_two() && bs.min <= 64 * 1024 {
        bs.min
    } else {
        1
    };
    let preferred = if bs.preferred.is_power_of_two() && bs.preferred >= min {
        bs.preferred
    } else {
        min.max(4096)
    };
    let mut max = bs.max.min(config.max_payload).max(min);
    max -= max % min;
    (min, preferred, max)
}

fn take_contexts(st: &mut Haggle, export: &str) -> Vec<(ContextId, MetaContext)> {
    match st.contexts.take() {
        Some((name, ctx)) if name == export && st.structured => ctx,
        _ => Vec::new(),
    }
}

async fn open_export(
    provider: &Arc<dyn ExportProvider>,
    requested: &str,
) -> Result<(String, Arc<dyn Export>), NbdError> {
    let name = if requested.is_empty() {
        provider.default_export().ok_or(NbdError::NoDefaultExport)?
    } else {
        requested.to_owned()
    };
    let p = provider.clone();
    let n = name.clone();
    let export = blocking("open export", move || p.open(&n)).await?;
    Ok((name, export))
}

async fn meta_context<S>(
    stream: &mut S,
    provider: &Arc<dyn ExportProvider>,
    st: &mut Haggle,
    option: u32,
    data: &[u8],
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let set = option == proto::OPT_SET_META_CONTEXT;
    if set {
        // A failed SET leaves nothing selected, per the spec.
        st.contexts = None;
    }
    if !st.structured {
        return reply_err(
            stream,
            option,
            proto::REP_ERR_INVALID,
            "metadata contexts need structured replies first",
        )
        .await;
    }
    let req = match proto::parse_meta_context_request(data) {
        Ok(r) => r,
        Err(e) => return reply_err(stream, option, proto::REP_ERR_INVALID, &e.to_string()).await,
    };
    let (name, export) = match open_export(provider, &req.export).await {
        Ok(x) => x,
        Err(e) => return reply_err(stream, option, proto::REP_ERR_UNKNOWN, &e.to_string()).await,
    };
    let ex = export.clone();
    let extra = blocking("list meta contexts", move || Ok(ex.meta_contexts()))
        .await
        .unwrap_or_default();
    let mut available = vec![MetaContext::BaseAllocation];
    available.extend(
        extra
            .into_iter()
            .filter(|n| n != proto::BASE_ALLOCATION)
            .map(MetaContext::Named),
    );

    let mut chosen: Vec<MetaContext> = Vec::new();
    if req.queries.is_empty() {
        if !set {
            chosen = available.clone();
        }
    } else {
        for q in &req.queries {
            for c in &available {
                if query_matches(q, c.name()) && !chosen.contains(c) {
                    chosen.push(c.clone());
                }
            }
        }
    }

    let mut out = Vec::new();
    let mut selected = Vec::new();
    for (i, c) in chosen.into_iter().enumerate() {
        // Ids start at 1 so a stray zero from a confused client never matches.
        let id = if set { i as u32 + 1 } else { 0 };
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(c.name().as_bytes());
        out.extend_from_slice(&proto::encode_option_reply(
            option,
            proto::REP_META_CONTEXT,
            &d,
        ));
        selected.push((ContextId(id), c));
    }
    out.extend_from_slice(&proto::encode_option_reply(option, proto::REP_ACK, &[]));
    stream.write_all(&out).await?;
    stream.flush().await?;
    if set {
        st.contexts = Some((name, selected));
    }
    Ok(())
}

/// A query selects a context by its exact name, or every context of a
/// namespace when it is just `namespace:`.
pub fn query_matches(query: &str, context: &str) -> bool {
    if query == context {
        return true;
    }
    query.ends_with(':') && query.matches(':').count() == 1 && context.starts_with(query)
}

async fn reply_ack<S: AsyncWrite + Unpin>(stream: &mut S, option: u32) -> Result<(), NbdError> {
    stream
        .write_all(&proto::encode_option_reply(option, proto::REP_ACK, &[]))
        .await?;
    stream.flush().await?;
    Ok(())
}

async fn reply_err<S: AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    code: u32,
    msg: &str,
) -> Result<(), NbdError> {
    debug!(option, code, msg, "option refused");
    stream
        .write_all(&proto::encode_option_reply(
            option,
            code,
            proto::clip_message(msg).as_bytes(),
        ))
        .await?;
    stream.flush().await?;
    Ok(())
}

/// `read_exact` that reports a clean end of stream as `None` instead of an error.
pub async fn read_or_eof<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> Result<Option<()>, NbdError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(Some(())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Runs a provider call of the handshake on the blocking pool (requests of
/// the transmission phase run on the connection's workers instead). A panic
/// in the backend becomes an EIO reply instead of taking the connection down.
async fn blocking<T, F>(op: &'static str, f: F) -> Result<T, NbdError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NbdError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(NbdError::BackendPanicked {
            op,
            reason: e.to_string(),
        }),
    }
}
