//! Feeds arbitrary bytes as the client side of one connection through the
//! whole server path (greeting, option haggling, transmission) against
//! in-memory exports, and through the pure parsers directly.
#![no_main]

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use multisnap_nbd::testing::{MemExport, MemProvider};
use multisnap_nbd::{proto, serve_connection, CancellationToken, ExportProvider, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Client bytes come from the fuzz input, in small uneven pieces so partial
/// reads are exercised; whatever the server writes is dropped.
struct FuzzStream {
    input: Vec<u8>,
    pos: usize,
}

impl AsyncRead for FuzzStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let rest = &self.input[self.pos..];
        let piece = 1 + (self.pos % 37);
        let n = rest.len().min(buf.remaining()).min(piece);
        buf.put_slice(&rest[..n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for FuzzStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn provider() -> Arc<dyn ExportProvider> {
    static P: OnceLock<Arc<dyn ExportProvider>> = OnceLock::new();
    P.get_or_init(|| {
        let mut p = MemProvider::new();
        p.add("disk", Arc::new(MemExport::new(256 * 1024, false)), Some("d"));
        p.add("ro", Arc::new(MemExport::new(64 * 1024, true)), None);
        p.set_default("disk");
        Arc::new(p)
    })
    .clone()
}

fuzz_target!(|data: &[u8]| {
    // Pure parsers first: they must never panic on any slice.
    if let Ok(h) = <&[u8; proto::REQUEST_HEADER_LEN]>::try_from(data.get(..28).unwrap_or(&[])) {
        let _ = proto::parse_request_header(h);
    }
    if let Ok(h) = <&[u8; proto::OPTION_HEADER_LEN]>::try_from(data.get(..16).unwrap_or(&[])) {
        let _ = proto::parse_option_header(h);
    }
    let _ = proto::parse_info_request(data);
    let _ = proto::parse_meta_context_request(data);

    // Then the whole connection.
    let config = Arc::new(ServerConfig {
        max_payload: 1024 * 1024,
        max_in_flight: 8,
        max_in_flight_bytes: 4 * 1024 * 1024,
        handshake_timeout: Some(Duration::from_secs(5)),
        ..ServerConfig::default()
    });
    let stream = FuzzStream {
        input: data.to_vec(),
        pos: 0,
    };
    let _ = runtime().block_on(serve_connection(
        stream,
        provider(),
        config,
        CancellationToken::new(),
    ));
});
