//! What the running kernel's FUSE offers, learned by a short mount of an empty filesystem that
//! only records the INIT request (protocol version and capability flags) and unmounts.

use fuser::{Config, Filesystem, InitFlags, KernelConfig, Request, Session};
use parking_lot::Mutex;
use std::io;
use std::path::Path;
use std::sync::Arc;

/// The kernel's side of INIT.
#[derive(Clone, Debug, Default)]
pub struct KernelOffer {
    pub protocol: (u32, u32),
    /// Names of the INIT capability flags the kernel offered.
    pub capabilities: Vec<String>,
}

impl KernelOffer {
    pub fn offers(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c == name)
    }
}

struct Probe(Arc<Mutex<Option<KernelOffer>>>);

impl Filesystem for Probe {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let abi = config.kernel_abi();
        let caps: InitFlags = config.capabilities();
        let offer = KernelOffer {
            protocol: (abi.0, abi.1),
            capabilities: caps.iter_names().map(|(n, _)| n.to_string()).collect(),
        };
        *self.0.lock() = Some(offer);
        Ok(())
    }
}

/// Mount a probe filesystem on `dir` (an empty directory), record INIT, unmount.
pub fn probe(dir: &Path) -> io::Result<KernelOffer> {
    let slot = Arc::new(Mutex::new(None));
    let mut config = Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("cowfs-probe".into())];
    let mut session = Session::new(Probe(slot.clone()), dir, &config)?;
    session.unmount()?;
    drop(session);
    let offer = slot.lock().take();
    offer.ok_or_else(|| io::Error::other("the kernel sent no INIT"))
}
