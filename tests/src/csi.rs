//! The CSI driver as a test runs it: `multisnap-csi` on a unix socket in front of a live
//! [`Agent`], and a tonic channel to it for tests that make many calls (a Python call per
//! request would dominate their time).

use crate::{csi_bin, grpc_call, Agent};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// The node name [`CsiDriver::start`] gives the driver: its ids start with `node-1/`.
pub const CSI_NODE: &str = "node-1";

/// A `multisnap-csi` driver on a unix socket in a test's directory, in front of an agent (its
/// gRPC and NBD unix sockets); killed when dropped. `TEST_CSI_LOG` sets its log filter
/// (default `warn`).
pub struct CsiDriver {
    child: Child,
    pub socket: PathBuf,
}

impl CsiDriver {
    /// Starts the driver for node [`CSI_NODE`] on `dir/csi.sock` and waits until it serves.
    pub fn start(dir: &Path, agent: &Agent) -> CsiDriver {
        CsiDriver::start_on(dir, agent, CSI_NODE)
    }

    /// [`CsiDriver::start`] for node `node`.
    pub fn start_on(dir: &Path, agent: &Agent, node: &str) -> CsiDriver {
        CsiDriver::start_with(dir, agent, node, &[], None)
    }

    /// [`CsiDriver::start_on`] with more flags, and its log (stderr) appended to `log` when
    /// given, for tests that read what the driver reported.
    pub fn start_with(
        dir: &Path,
        agent: &Agent,
        node: &str,
        extra: &[String],
        log: Option<&Path>,
    ) -> CsiDriver {
        let socket = dir.join("csi.sock");
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .expect("open the driver's log file"),
            ),
            None => Stdio::inherit(),
        };
        let child = Command::new(csi_bin())
            .args(extra)
            .arg(format!("--csi-socket=unix://{}", socket.display()))
            .arg("--agent-socket")
            .arg(agent.data_dir.join("grpc.sock"))
            .arg("--nbd-socket")
            .arg(&agent.nbd_socket)
            .arg(format!("--node-name={node}"))
            .env(
                "RUST_LOG",
                std::env::var("TEST_CSI_LOG")
                    .unwrap_or_else(|_| if log.is_some() { "info" } else { "warn" }.into()),
            )
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start multisnap-csi");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "multisnap-csi never served {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        CsiDriver { child, socket }
    }

    /// A channel to the driver's socket (connects lazily, so it outlives nothing).
    pub fn channel(&self) -> Channel {
        let path = self.socket.clone();
        Endpoint::from_static("http://localhost")
            .timeout(Duration::from_secs(60))
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
    }

    /// The gRPC address of its socket, for [`grpc_call`] and grpcurl.py.
    pub fn addr(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    pub fn call(&self, method: &str, body: &str) -> Result<serde_json::Value, (String, String)> {
        grpc_call(&self.addr(), method, body)
    }

    /// [`CsiDriver::call`] that must succeed.
    pub fn ok(&self, method: &str, body: &str) -> serde_json::Value {
        self.call(method, body)
            .unwrap_or_else(|(c, m)| panic!("{method} {body}: {c}: {m}"))
    }

    /// SIGKILL: the driver dies wherever it is, as a crashed pod.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill the driver");
        let _ = self.child.wait();
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CreateVolume request as the external-provisioner makes it: `required_bytes` (0: the
/// driver's choice), one capability, and a snapshot to restore when given.
pub fn create_volume_request(
    name: &str,
    required_bytes: i64,
    capability: multisnap_csi::csi::VolumeCapability,
    snapshot: Option<&str>,
) -> multisnap_csi::csi::CreateVolumeRequest {
    use multisnap_csi::csi::volume_content_source::{SnapshotSource, Type};
    use multisnap_csi::csi::{CapacityRange, CreateVolumeRequest, VolumeContentSource};
    CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(CapacityRange {
            required_bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![capability],
        volume_content_source: snapshot.map(|id| VolumeContentSource {
            r#type: Some(Type::Snapshot(SnapshotSource {
                snapshot_id: id.to_string(),
            })),
        }),
        ..Default::default()
    }
}
