//! multisnap's gRPC API, package `multisnap.v1`, generated from `proto/multisnap/v1/*.proto`.
//! The encoded file descriptor set is exported for server reflection.

pub mod v1 {
    tonic::include_proto!("multisnap.v1");
}

/// The encoded `FileDescriptorSet` of the API (for tonic-reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/multisnap_descriptor.bin"));

/// The largest HTTP/2 frame an agent or the CLI accepts (the SETTINGS_MAX_FRAME_SIZE each
/// announces; the peer sends data frames up to it). HTTP/2's default, 16 KiB, cuts a 1 MiB
/// delta message into 64 frames, each parsed, flow-controlled and handed up on its own at both
/// ends and at a relaying CLI; 256 KiB makes that four, while a frame still occupies a
/// connection shared with other calls for well under a millisecond on a fast link.
pub const MAX_FRAME_BYTES: u32 = 256 << 10;

/// The HTTP/2 flow-control windows every multisnap client and server opens for one stream and
/// for a whole connection, instead of the default 64 KiB: a delta stream of 1 MiB messages
/// would otherwise stop for a window update every 64 KiB, a round trip each. The stream window
/// is also how far a sender runs ahead of a receiver that stops to write: an apply pauses at
/// every commit and checkpoint (its flushes), and with 8 MiB both agents sat idle through
/// them (docs/BENCHMARKS.md §6, "A full apply past the page cache"). A receiver that falls
/// behind holds up to this much per stream.
pub const STREAM_WINDOW_BYTES: u32 = 32 << 20;
pub const CONNECTION_WINDOW_BYTES: u32 = 64 << 20;

/// `e` with the windows and frame size above: what every client that carries delta streams
/// sets, so the agent's server and its clients agree.
pub fn for_streams(e: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
    e.initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
}

/// Why a connection to an agent failed, in words: `what` (e.g. "cannot connect to URI"),
/// then the error and each of its causes. tonic's own text names some of its causes already:
/// each is said once.
pub fn connect_error(what: &str, e: &tonic::transport::Error) -> String {
    let mut msg = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(&format!(": {text}"));
        }
        source = s.source();
    }
    msg
}
