//! Configuration types and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use super::backends::ForwardingSection;
use super::{BackendConfig, PoolConfig, QueueSelection, RuleConfig};

/// The whole configuration file, as written. The rest of xdpdns sees it
/// only as a [`super::Config`], split into what is fixed while running and
/// what reloads live.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    /// Name of this instance: its pins live in `<pin_root>/<instance>/` and its
    /// runtime files in `<runtime_dir>/<instance>/`. Instances never touch each
    /// other's.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Where the control socket and the instance lock live.
    #[serde(default = "default_runtime_dir")]
    pub runtime_dir: PathBuf,
    pub xdp: XdpSection,
    #[serde(default)]
    pub xsk: XskSection,
    #[serde(default)]
    pub dataplane: DataplaneSection,
    #[serde(default)]
    pub supervisor: SupervisorSection,
    #[serde(default)]
    pub control: ControlSection,
    #[serde(default)]
    pub metrics: Option<MetricsSection>,
    /// Addresses served both from AF_XDP and from the kernel stack.
    #[serde(default)]
    pub listen: Vec<Listen>,
    /// Local answers, first match wins; unmatched queries go to the default
    /// pool, or get REFUSED when there are no backends.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
    #[serde(default)]
    pub backend: Vec<BackendConfig>,
    #[serde(default)]
    pub pool: Vec<PoolConfig>,
    #[serde(default)]
    pub forwarding: ForwardingSection,
    #[serde(default)]
    pub acl: super::acl::AclSection,
    #[serde(default)]
    pub tcp: super::tcp::TcpSection,
    /// Per-client rate limits, enforced in XDP.
    #[serde(default)]
    pub limits: Option<super::abuse::LimitsSection>,
    /// Client prefixes dropped in XDP.
    #[serde(default)]
    pub block: Vec<super::abuse::BlockConfig>,
    /// Rules that block a client prefix for a while when its answers of a
    /// kind come too fast.
    #[serde(default)]
    pub dynamic_block: Vec<super::abuse::DynamicBlockConfig>,
    /// The packet cache shared by every queue.
    #[serde(default)]
    pub cache: super::cache::CacheSection,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct XdpSection {
    /// The network interface whose queues are served.
    pub interface: String,
    /// `"all"` or a list of queue ids.
    #[serde(default)]
    pub queues: QueueSelection,
    #[serde(default)]
    pub mode: XdpMode,
    /// A directory on a bpffs; the instance's pins go in a subdirectory.
    #[serde(default = "default_pin_root")]
    pub pin_root: PathBuf,
    /// Redirect the listen addresses to AF_XDP. With false, the program
    /// passes everything to the kernel path, where the dataplanes answer on
    /// their sockets (for comparison, or to take AF_XDP out of service live).
    #[serde(default = "default_true")]
    pub redirect: bool,
    /// Whether the program may answer by itself (XDP_TX: REFUSED for
    /// clients outside the ACL). `auto`: yes, except on a veth, whose peer
    /// receives such frames only while it runs an XDP program of its own;
    /// there the kernel path answers instead.
    #[serde(default)]
    pub tx_answers: TxAnswers,
}

/// Whether the XDP program sends answers itself (XDP_TX).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TxAnswers {
    /// Yes, unless the interface is a veth.
    #[default]
    Auto,
    /// Yes (a veth whose peer runs XDP, e.g. another AF_XDP program).
    Always,
    /// No: the kernel path answers.
    Never,
}

impl TxAnswers {
    /// Whether XDP_TX is used on an interface that is (or is not) a veth.
    pub fn enabled(self, veth: bool) -> bool {
        match self {
            TxAnswers::Auto => !veth,
            TxAnswers::Always => true,
            TxAnswers::Never => false,
        }
    }
}

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    #[default]
    Auto,
    /// Driver mode; fails if the driver has no XDP support.
    Native,
    /// SKB mode: works everywhere, slower.
    Generic,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct XskSection {
    /// UMEM frames per queue (a power of two). Each frame holds one packet.
    #[serde(default = "default_frames")]
    pub frames: u32,
    /// Bytes per frame: 2048 or 4096.
    #[serde(default = "default_frame_size")]
    pub frame_size: u32,
    /// Copy or zero-copy binding of the AF_XDP sockets.
    #[serde(default)]
    pub bind_mode: XskBindMode,
    /// Descriptors handled per ring operation.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Verify query checksums in XDP: a full or partial (a local peer's TX
    /// offload) checksum goes to AF_XDP, any other to the kernel stack,
    /// which drops corrupt frames.
    #[serde(default = "default_true")]
    pub verify_checksums: bool,
    /// When a busy queue runs dry, nap this long (µs) before looking again,
    /// so the next packets arrive as one batch instead of one wake-up each;
    /// after 2 ms without work the dataplane blocks in poll(). 0: block at once.
    #[serde(default = "default_idle_nap_us")]
    pub idle_nap_us: u32,
}

/// Zero-copy needs driver support; copy mode works on every XDP-capable device.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum XskBindMode {
    /// Zero-copy where the driver supports it, copy otherwise.
    #[default]
    Auto,
    Copy,
    ZeroCopy,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct DataplaneSection {
    /// Dataplanes run as this user (never root).
    #[serde(default = "default_user")]
    pub user: String,
    /// Their group; the user's primary group when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Keep CAP_IPC_LOCK so UMEM is not charged to RLIMIT_MEMLOCK.
    #[serde(default)]
    pub keep_ipc_lock: bool,
    /// Path of `xdpdns-dataplane`; by default next to the `xdpdns` binary.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// How often each dataplane reports its counters to the loader.
    #[serde(default = "default_stats_interval_ms")]
    pub stats_interval_ms: u32,
    /// UDP payload size advertised in our EDNS OPT records.
    #[serde(default = "default_edns_udp_size")]
    pub edns_udp_size: u16,
    /// CPU affinity: the dataplane of queue N runs on `cpus[N % len]` (e.g.
    /// the CPU that takes the queue's interrupts). Empty: not pinned.
    #[serde(default)]
    pub cpus: Vec<u32>,
}

/// How the loader watches its dataplanes.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SupervisorSection {
    /// A dataplane silent this long (no counters, no heartbeat) is killed and restarted.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u32,
    /// Restarts of one queue allowed within `restart_window_s`; past that the
    /// queue stays on the kernel path until `xdpdns restart-queue`.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
    #[serde(default = "default_restart_window_s")]
    pub restart_window_s: u32,
}

/// The control socket (`xdpdns status`, `reload`, `restart-queue`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlSection {
    /// Group that may read `status` over the control socket (mode 0660
    /// with this group); root's group when absent.
    #[serde(default)]
    pub group: Option<String>,
    /// Group that may also `reload` and `restart-queue`. Root and the
    /// loader's own user always may; nobody else when absent.
    #[serde(default)]
    pub admin_group: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Where the Prometheus endpoint listens, e.g. "127.0.0.1:9153".
    #[serde(deserialize_with = "socket_addr")]
    pub address: SocketAddr,
    /// Scrapers allowed (prefixes); others are closed at once. Default:
    /// loopback only.
    #[serde(default = "default_metrics_allow")]
    pub allow: Vec<String>,
}

impl MetricsSection {
    /// The allowed prefixes (validated).
    pub fn allowed(&self) -> Vec<crate::net::Prefix> {
        self.allow.iter().filter_map(|p| p.parse().ok()).collect()
    }
}

fn default_metrics_allow() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// `"a.b.c.d:port"` or `"[v6]:port"`.
    #[serde(deserialize_with = "socket_addr")]
    pub address: SocketAddr,
}

pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an address with a port: write \"192.0.2.1:53\" or \"[2001:db8::1]:53\""
        ))
    })
}

fn default_instance() -> String {
    "default".into()
}
fn default_runtime_dir() -> PathBuf {
    "/run/xdpdns".into()
}
fn default_pin_root() -> PathBuf {
    "/sys/fs/bpf/xdpdns".into()
}
fn default_frames() -> u32 {
    4096
}
fn default_frame_size() -> u32 {
    2048
}
fn default_batch_size() -> u32 {
    64
}
fn default_heartbeat_timeout_ms() -> u32 {
    3000
}
fn default_max_restarts() -> u32 {
    20
}
fn default_restart_window_s() -> u32 {
    600
}
fn default_idle_nap_us() -> u32 {
    20
}
fn default_true() -> bool {
    true
}
fn default_user() -> String {
    "xdpdns-dp".into()
}
fn default_stats_interval_ms() -> u32 {
    1000
}
fn default_edns_udp_size() -> u16 {
    1232
}

impl Default for XskSection {
    fn default() -> Self {
        XskSection {
            frames: default_frames(),
            frame_size: default_frame_size(),
            bind_mode: XskBindMode::default(),
            batch_size: default_batch_size(),
            verify_checksums: true,
            idle_nap_us: default_idle_nap_us(),
        }
    }
}

impl Default for DataplaneSection {
    fn default() -> Self {
        DataplaneSection {
            user: default_user(),
            group: None,
            keep_ipc_lock: false,
            binary: None,
            stats_interval_ms: default_stats_interval_ms(),
            edns_udp_size: default_edns_udp_size(),
            cpus: Vec::new(),
        }
    }
}

impl Default for SupervisorSection {
    fn default() -> Self {
        SupervisorSection {
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            max_restarts: default_max_restarts(),
            restart_window_s: default_restart_window_s(),
        }
    }
}
