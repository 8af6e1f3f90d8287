//! The CSI driver as a test runs it: `multisnap-csi` on a unix socket in front of a live
//! [`Agent`], and a tonic channel to it for tests that make many calls (a Python call per
//! request would dominate their time).

use crate::{csi_bin, Agent};
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

pub struct CsiDriver {
    child: Child,
    pub socket: PathBuf,
}

impl CsiDriver {
    /// Starts the driver for node `node` on `dir/csi.sock` and waits until it serves.
    pub fn start(dir: &Path, agent: &Agent, node: &str) -> CsiDriver {
        let socket = dir.join("csi.sock");
        let child = Command::new(csi_bin())
            .arg(format!("--csi-socket=unix://{}", socket.display()))
            .arg("--agent-socket")
            .arg(agent.data_dir.join("grpc.sock"))
            .arg("--nbd-socket")
            .arg(&agent.nbd_socket)
            .arg(format!("--node-name={node}"))
            .env(
                "RUST_LOG",
                std::env::var("TEST_CSI_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
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
