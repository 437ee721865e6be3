//! The component's WASI context: the little it may reach outside its own memory, and how
//! much of the host it may hold.

use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
use wasmtime_wasi::p2::bindings::sockets::tcp_create_socket;
use wasmtime_wasi::p2::{Network, SocketError, TcpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};

use crate::engine::to_anyhow;
use crate::network::NetworkPolicy;
use crate::output::GuestOutput;

/// Most TCP sockets one instance may hold at once. A cluster client keeps one connection
/// per node it talks to; this leaves room for large clusters while keeping a component
/// from exhausting the host's file descriptors. Over it, `create-tcp-socket` fails with
/// `new-socket-limit`.
pub const MAX_SOCKETS_PER_INSTANCE: usize = 256;

/// Most entries in one instance's resource table (sockets, streams, pollables, name
/// lookups…): about a dozen per connection suffice. Over it, the host call that would add
/// one traps, and the next call starts a new instance. (wasmtime's default is 1,000,000.)
pub const MAX_TABLE_ENTRIES: usize = 4096;

/// The WASI context of one instance: deny by default, grant only what the WIT world says
/// the component needs. TCP (and name lookup) as `policy` allows; no environment, no
/// arguments, no working directory, no preopened directories, an empty stdin; stdout and
/// stderr go to `output`. Clocks and random numbers are WASI's defaults.
pub(crate) fn wasi_context(policy: NetworkPolicy, output: &GuestOutput) -> WasiCtx {
    let mut wasi = WasiCtxBuilder::new();
    wasi.stdin(tokio::io::empty())
        .stdout(output.clone())
        .stderr(output.clone());
    policy.apply(&mut wasi);
    wasi.build()
}

/// A resource table within [`MAX_TABLE_ENTRIES`].
pub(crate) fn resource_table() -> ResourceTable {
    let mut table = ResourceTable::new();
    table.set_max_capacity(MAX_TABLE_ENTRIES);
    table
}

/// What an instance's state keeps for [`add_sandbox_limits`].
#[derive(Debug)]
pub(crate) struct SandboxLimits {
    /// Which names the component may resolve ([`NetworkPolicy::may_look_up`]).
    policy: NetworkPolicy,
    /// Resource ids of the TCP sockets created, some possibly dropped since.
    sockets: Vec<u32>,
}

impl SandboxLimits {
    pub(crate) fn new(policy: &NetworkPolicy) -> SandboxLimits {
        SandboxLimits {
            policy: policy.clone(),
            sockets: Vec::new(),
        }
    }
}

/// An instance state that carries [`SandboxLimits`].
pub(crate) trait SandboxView: WasiView {
    fn sandbox_limits(&mut self) -> &mut SandboxLimits;
}

/// Replaces two of wasmtime-wasi's socket functions in `linker` (which must already hold
/// them, from `add_to_linker_async`) with checked ones:
/// - `resolve-addresses` resolves only the names the URL gives, and for a cluster URL the
///   names its masters announce within the allow-list (anything else is `access-denied`):
///   any other name would be a channel out through DNS for a component given with
///   `--component`;
/// - `create-tcp-socket` fails with `new-socket-limit` once the instance holds
///   [`MAX_SOCKETS_PER_INSTANCE`] sockets.
///
/// # Errors
/// The linker lacks those functions.
pub(crate) fn add_sandbox_limits<T: SandboxView + 'static>(
    linker: &mut Linker<T>,
) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    linker
        .instance("wasi:sockets/ip-name-lookup@0.2.12")
        .map_err(to_anyhow)?
        .func_wrap_async(
            "resolve-addresses",
            |mut store: StoreContextMut<'_, T>, (network, name): (Resource<Network>, String)| {
                Box::new(async move {
                    resolve_addresses(store.data_mut(), network, name)
                        .await
                        .map(|result| (result,))
                })
            },
        )
        .map_err(to_anyhow)?;
    linker
        .instance("wasi:sockets/tcp-create-socket@0.2.12")
        .map_err(to_anyhow)?
        .func_wrap(
            "create-tcp-socket",
            |mut store: StoreContextMut<'_, T>, (family,): (IpAddressFamily,)| {
                create_tcp_socket(store.data_mut(), family).map(|result| (result,))
            },
        )
        .map_err(to_anyhow)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// `resolve-addresses`, for the names [`NetworkPolicy::may_look_up`] allows only.
async fn resolve_addresses<T: SandboxView>(
    state: &mut T,
    network: Resource<Network>,
    name: String,
) -> wasmtime::Result<Result<Resource<ResolveAddressStream>, ErrorCode>> {
    let policy = state.sandbox_limits().policy.clone();
    if !policy.may_look_up(&name).await {
        return Ok(Err(ErrorCode::AccessDenied));
    }
    match ip_name_lookup::Host::resolve_addresses(&mut state.sockets(), network, name) {
        Ok(stream) => Ok(Ok(stream)),
        Err(error) => error_code(error),
    }
}

/// `create-tcp-socket`, within [`MAX_SOCKETS_PER_INSTANCE`] live sockets.
fn create_tcp_socket<T: SandboxView>(
    state: &mut T,
    family: IpAddressFamily,
) -> wasmtime::Result<Result<Resource<TcpSocket>, ErrorCode>> {
    let mut sockets = std::mem::take(&mut state.sandbox_limits().sockets);
    // A socket the component dropped is gone from the table (or its id now holds another
    // kind of resource); a reused id holding a new socket is counted once.
    let table = state.ctx().table;
    sockets.retain(|&rep| table.get(&Resource::<TcpSocket>::new_borrow(rep)).is_ok());
    let outcome = if sockets.len() >= MAX_SOCKETS_PER_INSTANCE {
        Ok(Err(ErrorCode::NewSocketLimit))
    } else {
        match tcp_create_socket::Host::create_tcp_socket(&mut state.sockets(), family) {
            Ok(socket) => {
                sockets.push(socket.rep());
                Ok(Ok(socket))
            }
            Err(error) => error_code(error),
        }
    };
    state.sandbox_limits().sockets = sockets;
    outcome
}

/// A socket error as the WIT error code it carries, or the trap it is.
fn error_code<T>(error: SocketError) -> wasmtime::Result<Result<T, ErrorCode>> {
    error.downcast().map(Err)
}

/// These tests call wasmtime-wasi's own implementations of the WASI imports on the context
/// [`wasi_context`] builds, exactly as the component's imports would reach them.
#[cfg(test)]
mod tests {
    use std::io::ErrorKind;
    use std::net::{Ipv4Addr, SocketAddr, TcpListener};
    use std::time::{Duration, Instant};

    use wasmtime::component::{Resource, ResourceTable};
    use wasmtime_wasi::cli::WasiCliView;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    use wasmtime_wasi::p2::bindings::cli::{environment, stdin};
    use wasmtime_wasi::p2::bindings::filesystem::preopens;
    use wasmtime_wasi::p2::bindings::sockets::network::{ErrorCode, IpAddressFamily};
    use wasmtime_wasi::p2::bindings::sockets::tcp::HostTcpSocket;
    use wasmtime_wasi::p2::bindings::sockets::{
        instance_network, tcp_create_socket, udp_create_socket,
    };
    use wasmtime_wasi::p2::{SocketError, StreamError};
    use wasmtime_wasi::sockets::WasiSocketsView;
    use wasmtime_wasi::{WasiCtxView, WasiView};

    use super::*;
    use crate::options::RedisAddress;

    struct Sandboxed {
        wasi: WasiCtx,
        table: ResourceTable,
        limits: SandboxLimits,
    }

    impl SandboxView for Sandboxed {
        fn sandbox_limits(&mut self) -> &mut SandboxLimits {
            &mut self.limits
        }
    }

    impl WasiView for Sandboxed {
        fn ctx(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.wasi,
                table: &mut self.table,
            }
        }
    }

    async fn sandbox_for(url: &str) -> Sandboxed {
        let endpoint = RedisAddress::from_url(url).unwrap();
        let policy = NetworkPolicy::resolve(&endpoint).await.unwrap();
        Sandboxed {
            limits: SandboxLimits::new(&policy),
            wasi: wasi_context(policy, &GuestOutput::new(1024)),
            table: resource_table(),
        }
    }

    fn code(error: SocketError) -> ErrorCode {
        error.downcast().expect("a WASI error code, not a trap")
    }

    /// Connects through the sandbox's WASI sockets the way the component does: create,
    /// start-connect, then finish-connect until it stops saying would-block.
    async fn wasi_connect(sandbox: &mut Sandboxed, to: SocketAddr) -> Result<(), ErrorCode> {
        let mut sockets = sandbox.sockets();
        let network = instance_network::Host::instance_network(&mut sockets).unwrap();
        let socket =
            tcp_create_socket::Host::create_tcp_socket(&mut sockets, IpAddressFamily::Ipv4)
                .map_err(code)?;
        sockets
            .start_connect(Resource::new_borrow(socket.rep()), network, to.into())
            .map_err(code)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match sockets
                .finish_connect(Resource::new_borrow(socket.rep()))
                .map_err(code)
            {
                Err(ErrorCode::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(error) => return Err(error),
                Ok(_streams) => return Ok(()),
            }
        }
    }

    /// Whether anything connected to `listener` (without waiting for it).
    fn was_contacted(listener: &TcpListener) -> bool {
        listener.set_nonblocking(true).unwrap();
        match listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_environment_arguments_or_working_directory() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let mut cli = sandbox.cli();
        assert_eq!(
            environment::Host::get_environment(&mut cli).unwrap(),
            vec![]
        );
        assert_eq!(
            environment::Host::get_arguments(&mut cli).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(environment::Host::initial_cwd(&mut cli).unwrap(), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_preopened_directories() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let directories = preopens::Host::get_directories(&mut sandbox.filesystem()).unwrap();
        assert!(directories.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stdin_is_empty() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let handle = stdin::Host::get_stdin(&mut sandbox.cli()).unwrap();
        let stream = sandbox.table.get_mut(&handle).unwrap();
        let read = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                stream.ready().await;
                match stream.read(64) {
                    Ok(bytes) if bytes.is_empty() => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("stdin answers at once");
        assert!(matches!(read, Err(StreamError::Closed)), "{read:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_reaches_the_redis_address_and_no_other() {
        let redis = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let redis_addr = redis.local_addr().unwrap();
        let other_addr = other.local_addr().unwrap();
        let mut sandbox = sandbox_for(&format!("redis://{redis_addr}")).await;

        assert_eq!(
            wasi_connect(&mut sandbox, other_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        assert!(!was_contacted(&other), "the denied port saw a connection");

        wasi_connect(&mut sandbox, redis_addr).await.unwrap();
        assert!(was_contacted(&redis));
    }

    /// The store is opened with one seed; the other masters are discovered by the guest and
    /// allowed because the cluster itself reports them; any other port stays unreachable.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cluster_url_reaches_the_cluster_nodes_and_no_other_port() {
        let cluster = taskstore_testing::redis_cluster::RedisCluster::start(3).unwrap();
        let stranger = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let stranger_addr = stranger.local_addr().unwrap();
        let policy = NetworkPolicy::for_url(
            &cluster.seed_url(0),
            &taskstore::config::TlsSettings::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let mut sandbox = Sandboxed {
            limits: SandboxLimits::new(&policy),
            wasi: wasi_context(policy, &GuestOutput::new(1024)),
            table: resource_table(),
        };
        assert_eq!(
            wasi_connect(&mut sandbox, stranger_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        for node in cluster.addrs() {
            wasi_connect(&mut sandbox, node).await.unwrap();
        }
        // Asked again after the cluster was consulted, the stranger is still refused.
        assert_eq!(
            wasi_connect(&mut sandbox, stranger_addr).await,
            Err(ErrorCode::AccessDenied)
        );
        assert!(
            !was_contacted(&stranger),
            "the denied port saw a connection"
        );
    }

    fn network(sandbox: &mut Sandboxed) -> Resource<Network> {
        instance_network::Host::instance_network(&mut sandbox.sockets()).unwrap()
    }

    /// The component may resolve the URL's host name, and no other: any other name would
    /// carry data out through DNS.
    #[tokio::test(flavor = "current_thread")]
    async fn only_the_urls_own_name_may_be_looked_up() {
        let mut sandbox = sandbox_for("redis://localhost:6379").await;
        for name in ["localhost", "LOCALHOST"] {
            let network = network(&mut sandbox);
            let stream = resolve_addresses(&mut sandbox, network, name.into())
                .await
                .unwrap();
            assert!(stream.is_ok(), "{name}: {stream:?}");
        }
        for name in [
            "exfiltrate.example",
            "localhost.",
            "127.0.0.1",
            "secret.localhost",
        ] {
            let network = network(&mut sandbox);
            let denied = resolve_addresses(&mut sandbox, network, name.into())
                .await
                .unwrap();
            assert!(matches!(denied, Err(ErrorCode::AccessDenied)), "{name}");
        }
        let mut by_address = sandbox_for("redis://127.0.0.1:6379").await;
        let network = network(&mut by_address);
        let denied = resolve_addresses(&mut by_address, network, "localhost".into())
            .await
            .unwrap();
        assert!(matches!(denied, Err(ErrorCode::AccessDenied)));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sockets_per_instance_are_capped_and_dropped_ones_are_freed() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let mut sockets = Vec::new();
        for _ in 0..MAX_SOCKETS_PER_INSTANCE {
            sockets.push(
                create_tcp_socket(&mut sandbox, IpAddressFamily::Ipv4)
                    .unwrap()
                    .unwrap(),
            );
        }
        let over = create_tcp_socket(&mut sandbox, IpAddressFamily::Ipv4).unwrap();
        assert!(matches!(over, Err(ErrorCode::NewSocketLimit)), "{over:?}");
        let dropped = sockets.pop().unwrap();
        HostTcpSocket::drop(&mut sandbox.sockets(), dropped).unwrap();
        create_tcp_socket(&mut sandbox, IpAddressFamily::Ipv6)
            .unwrap()
            .unwrap();
    }

    #[test]
    fn resource_table_holds_at_most_the_cap() {
        let mut table = resource_table();
        for i in 0..MAX_TABLE_ENTRIES {
            table.push(i).unwrap();
        }
        assert!(table.push(0usize).is_err());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn binding_a_port_and_udp_are_denied() {
        let mut sandbox = sandbox_for("redis://127.0.0.1:6379").await;
        let mut sockets = sandbox.sockets();
        let network = instance_network::Host::instance_network(&mut sockets).unwrap();
        let socket =
            tcp_create_socket::Host::create_tcp_socket(&mut sockets, IpAddressFamily::Ipv4)
                .unwrap();
        let local: SocketAddr = (Ipv4Addr::LOCALHOST, 0).into();
        let bound = sockets
            .start_bind(Resource::new_borrow(socket.rep()), network, local.into())
            .await;
        assert_eq!(bound.map_err(code), Err(ErrorCode::AccessDenied));

        let udp =
            udp_create_socket::Host::create_udp_socket(&mut sockets, IpAddressFamily::Ipv4).await;
        assert_eq!(udp.map(|_| ()).map_err(code), Err(ErrorCode::AccessDenied));
    }
}
