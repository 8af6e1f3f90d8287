//! Listeners and per-connection driver: accept on TCP or unix sockets, run
//! the handshake, then the transmission phase, under one shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::ServerConfig;
use crate::error::NbdError;
use crate::export::ExportProvider;
use crate::handshake::{self, Negotiated, Session, TlsState};
use crate::observer::HandshakeOutcome;
use crate::tls::TlsPolicy;
use crate::transmission;

/// Serves one already-accepted connection to completion, with the TLS policy of TCP
/// listeners (`config.tls`). Returns `Ok` when the client left (or shutdown ended the
/// session) and `Err` for protocol violations, failed TLS handshakes and socket failures;
/// either way the stream is closed.
pub async fn serve_connection<S>(
    stream: S,
    provider: Arc<dyn ExportProvider>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let policy = config.tls.as_ref().map(|t| t.tcp);
    serve_with_tls_policy(stream, provider, config, shutdown, policy).await
}

/// [`serve_connection`] under the TLS policy of the listener that accepted it (`None`: no
/// TLS configured).
async fn serve_with_tls_policy<S>(
    stream: S,
    provider: Arc<dyn ExportProvider>,
    config: Arc<ServerConfig>,
    shutdown: CancellationToken,
    policy: Option<TlsPolicy>,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tls = policy.map_or(TlsState::Unavailable, TlsState::before_upgrade);
    let handshaken = {
        // The TLS handshake counts against the handshake timeout like any option.
        let hs = handshake_phase(stream, &provider, &config, &shutdown, tls);
        let timed = async {
            match config.handshake_timeout {
                Some(t) => tokio::time::timeout(t, hs)
                    .await
                    .unwrap_or(Err(NbdError::HandshakeTimeout)),
                None => hs.await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            r = timed => r,
        }
    };
    let outcome = match &handshaken {
        Ok(Handshaken::Plain(..)) => HandshakeOutcome::Plaintext,
        Ok(Handshaken::Tls(..)) => HandshakeOutcome::Tls,
        Err(NbdError::TlsHandshake(_)) => HandshakeOutcome::TlsFailed,
        Ok(Handshaken::Left) | Err(_) => HandshakeOutcome::Abandoned,
    };
    if let Some(obs) = &config.observer {
        obs.handshake_finished(outcome);
    }
    match handshaken? {
        Handshaken::Plain(stream, session) => {
            tracing::Span::current().record("tls", false);
            transmit(stream, session, &config, &shutdown).await
        }
        Handshaken::Tls(stream, session) => transmit(*stream, session, &config, &shutdown).await,
        Handshaken::Left => {
            debug!("client left during handshake");
            Ok(())
        }
    }
}

/// The stream a connection goes on with after option haggling.
enum Handshaken<S> {
    Plain(S, Session),
    Tls(Box<TlsStream<S>>, Session),
    Left,
}

/// Option haggling, and when the client sends NBD_OPT_STARTTLS, the TLS handshake on the
/// same socket and haggling again inside it.
async fn handshake_phase<S>(
    mut stream: S,
    provider: &Arc<dyn ExportProvider>,
    config: &ServerConfig,
    shutdown: &CancellationToken,
    tls: TlsState,
) -> Result<Handshaken<S>, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let no_zeroes = match handshake::negotiate(&mut stream, provider, config, shutdown, tls).await?
    {
        Negotiated::Session(session) => return Ok(Handshaken::Plain(stream, session)),
        Negotiated::Left => return Ok(Handshaken::Left),
        Negotiated::StartTls { no_zeroes } => no_zeroes,
    };
    // STARTTLS is acknowledged only in the Offered and Required states, which need settings.
    let Some(settings) = &config.tls else {
        let missing = std::io::Error::other("TLS is not configured");
        return Err(NbdError::TlsHandshake(missing));
    };
    let mut stream = settings
        .acceptor()
        .accept(stream)
        .await
        .map_err(NbdError::TlsHandshake)?;
    let (_, conn) = stream.get_ref();
    tracing::Span::current().record("tls", true);
    info!(
        version = ?conn.protocol_version(),
        client_certificate = conn.peer_certificates().is_some(),
        "TLS established"
    );
    let active = TlsState::Active;
    match handshake::haggle(&mut stream, provider, config, shutdown, no_zeroes, active).await? {
        Negotiated::Session(session) => Ok(Handshaken::Tls(Box::new(stream), session)),
        // Inside TLS haggling never asks for TLS again; treat it like a client that left.
        Negotiated::Left | Negotiated::StartTls { .. } => Ok(Handshaken::Left),
    }
}

/// The transmission phase of a negotiated session, over plaintext or TLS alike.
async fn transmit<S>(
    stream: S,
    session: Session,
    config: &ServerConfig,
    shutdown: &CancellationToken,
) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let export_name = session.export_name.clone();
    let span = tracing::Span::current();
    span.record("export", export_name.as_str());
    debug!(
        size = session.info.size,
        structured = session.structured,
        contexts = session.contexts.len(),
        flags = session.transmission_flags,
        "entering transmission"
    );
    if let Some(obs) = &config.observer {
        obs.connection_opened(&export_name);
    }
    let (rd, wr) = tokio::io::split(stream);
    // Buffered: a client with 32 requests in flight sends headers (and small payloads) back
    // to back, and one recv for many of them beats two per request. Large payloads bypass
    // the buffer (tokio's BufReader reads them straight into the request's own buffer).
    let rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    let res = transmission::run(rd, wr, session, config, shutdown).await;
    if let Some(obs) = &config.observer {
        obs.connection_closed(&export_name);
    }
    res
}

/// Serves NBD on a TCP listener until `shutdown` is cancelled, then stops
/// accepting, lets every connection finish its in-flight requests (up to
/// `config.shutdown_grace`) and returns.
pub async fn serve_tcp(
    listener: TcpListener,
    provider: Arc<dyn ExportProvider>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    accept_loop(Listener::Tcp(listener), provider, config, shutdown).await
}

/// Same as [`serve_tcp`] for a unix-domain socket. The socket file is left
/// for the caller to remove.
pub async fn serve_unix(
    listener: UnixListener,
    provider: Arc<dyn ExportProvider>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    accept_loop(Listener::Unix(listener), provider, config, shutdown).await
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

async fn accept_loop(
    listener: Listener,
    provider: Arc<dyn ExportProvider>,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let config = Arc::new(config);
    let mut conns = JoinSet::new();
    let mut next_id: u64 = 0;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = accept(&listener) => r,
        };
        let (spawn, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Usually EMFILE or a connection reset before accept; back
                // off a little instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        let span = info_span!("nbd_conn", id = next_id, peer = %peer, export = tracing::field::Empty, tls = tracing::field::Empty);
        let slot = config.connections.try_take();
        let refusal = slot.is_none().then(|| {
            let max = config.connections.max();
            warn!(parent: &span, max, "connection refused: the server's connection limit is reached");
            if let Some(obs) = &config.observer {
                obs.handshake_finished(HandshakeOutcome::RefusedLimit);
            }
            format!("too many connections: this server serves at most {max} at once; try again later")
        });
        let fut = spawn(provider.clone(), config.clone(), shutdown.clone(), refusal);
        conns.spawn(
            async move {
                debug!("connected");
                match fut.await {
                    Ok(()) => debug!("connection closed"),
                    Err(e) => info!(error = %e, "connection closed with error"),
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
    drop(listener);
    let drain = async { while conns.join_next().await.is_some() {} };
    if tokio::time::timeout(config.shutdown_grace, drain)
        .await
        .is_err()
    {
        warn!(
            remaining = conns.len(),
            "connections did not finish within the shutdown grace period; cutting them"
        );
        conns.abort_all();
        while conns.join_next().await.is_some() {}
    }
    Ok(())
}

type ConnFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), NbdError>> + Send>>;
/// Starts serving an accepted connection; with a refusal reason, only tells the client why
/// it is not served.
type Spawner = Box<
    dyn FnOnce(
            Arc<dyn ExportProvider>,
            Arc<ServerConfig>,
            CancellationToken,
            Option<String>,
        ) -> ConnFuture
        + Send,
>;

/// `unix` picks the TLS policy of unix-socket listeners instead of that of TCP ones.
fn spawner<S>(stream: S, unix: bool) -> Spawner
where
    S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static,
{
    Box::new(move |p, c, t, refusal| match refusal {
        None => {
            let policy = c.tls.as_ref().map(|t| if unix { t.unix } else { t.tcp });
            Box::pin(serve_with_tls_policy(stream, p, c, t, policy))
        }
        Some(reason) => Box::pin(refuse_connection(stream, reason)),
    })
}

/// How long a refused client gets to hear why before the connection closes.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers every option of a client that is not served with NBD_REP_ERR_POLICY and `reason`
/// (clients such as qemu and nbdinfo print it), then closes.
async fn refuse_connection<S>(mut stream: S, reason: String) -> Result<(), NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::time::timeout(REFUSAL_TIMEOUT, handshake::refuse(&mut stream, &reason))
        .await
        .unwrap_or(Err(NbdError::HandshakeTimeout))
}

async fn accept(listener: &Listener) -> std::io::Result<(Spawner, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Replies are already batched by the writer; Nagle only adds latency.
            let _ = s.set_nodelay(true);
            Ok((spawner(s, false), peer.to_string()))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((spawner(s, true), "unix".to_string()))
        }
    }
}
